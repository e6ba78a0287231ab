"""What every backend is to the sampling loop, and the recorder that wraps any of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Protocol

from ...specs import COMPONENTS

if TYPE_CHECKING:  # the CLI reads the backend names without importing torch
    import torch

#: A component as the loop sees it: named input tensors -> named output tensors.
ComponentFn = Callable[[Mapping[str, "torch.Tensor"]], dict[str, "torch.Tensor"]]


class Backend(Protocol):
    name: str
    device: "torch.device"

    def component(self, name: str) -> ComponentFn:
        """The callable for component ``name`` (one of :data:`svdtrt.specs.COMPONENTS`)."""

    def synchronize(self) -> None:
        """Wait for queued device work, so that wall-clock stage timings are true."""


class Recorder:
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
