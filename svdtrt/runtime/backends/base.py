"""What every backend is to the sampling loop, and the recorder that wraps any of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

from ...specs import COMPONENTS

if TYPE_CHECKING:  # the CLI reads the backend names without importing torch
    import torch

#: A component as the loop sees it: named input tensors -> named output tensors.
ComponentFn = Callable[[Mapping[str, "torch.Tensor"]], dict[str, "torch.Tensor"]]


class Backend:
    """A backend: the components of one bundle (or model) at one precision, on one device.

    Its life cycle is Polygraphy's runners': created, used through :meth:`component`, released
    with :meth:`close` (or as a context manager, ``with create_backend(...) as backend:``), which
    frees its sessions, engines or modules at once rather than whenever the garbage collector
    gets to them; a closed backend is not used again.

    Attributes:
        name: the backend's name (:data:`svdtrt.runtime.backends.BACKENDS`).
        device: where its outputs are (``torch.device``).
    """

    name: str
    device: "torch.device"

    def component(self, name: str) -> ComponentFn:
        """The callable for component ``name`` (one of :data:`svdtrt.specs.COMPONENTS`)."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work, so that wall-clock stage timings are true."""

    def close(self) -> None:
        """Release what the backend holds (sessions, engines, modules, device memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Recorder(Backend):
    """Wraps a backend and keeps a copy of every call's inputs and outputs, per component.

    Used by ``svdtrt check`` (component inputs from a real sampling run) and by calibration.

    Attributes:
        calls: ``{component: [(inputs, outputs), ...]}`` with CPU tensors, in call order.
    """

    def __init__(self, backend: Backend, components: tuple[str, ...] = tuple(COMPONENTS)):
        self.backend, self.components = backend, components
        self.name, self.device = backend.name, backend.device
        self.calls: dict[str, list] = {c: [] for c in components}

    def component(self, name: str) -> ComponentFn:
        fn = self.backend.component(name)
        if name not in self.components:
            return fn

        def run(inputs):
            outputs = fn(inputs)
            self.calls[name].append(({k: v.detach().cpu().clone() for k, v in inputs.items()},
                                     {k: v.detach().cpu().clone() for k, v in outputs.items()}))
            return outputs

        return run

    def synchronize(self) -> None:
        self.backend.synchronize()

    def close(self) -> None:
        """Close the wrapped backend; the recorded calls stay."""
        self.backend.close()
