"""What a candidate costs before it is measured: its UNet calls (the loop's plan,
:func:`~svdtrt.runtime.pipeline.planned_unet_calls`) priced at measured seconds per call of each
UNet graph, batch and precision, plus the precision's measured fixed cost per clip (the encoders,
the decode and the loop outside the UNet).

Before a graph and batch of a precision has been timed, its calls are priced by their FLOPs
(:func:`svdtrt.models.flops.unet_call_flops`, counted at the clip's size) at the precision's
measured seconds per FLOP (fp32's, before the precision's first clip), so the first order is the
FLOP order, refined with every clip (docs/architecture.md, "Tuning").
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from ..bundle.manifest import ProfileSettings
from ..models.flops import unet_call_flops
from ..runtime.backends import Backend, ComponentFn
from ..runtime.pipeline import planned_unet_calls
from ..runtime.settings import SamplingSettings
from ..specs import UNET_COMPONENTS
from .space import clip_settings

#: A UNet call as the cost model prices it: (component, batch).
Call = tuple[str, int]


def call_name(call: Call) -> str:
    """``unet_full b2``: how a call is named in the journal."""
    return f"{call[0]} b{call[1]}"


def parse_call_name(name: str) -> Call:
    component, _, batch = name.rpartition(" b")
    return component, int(batch)


class CallTimer(Backend):
    """Wraps a backend and times each UNet call, per (component, batch): wall seconds between a
    synchronised start and a synchronised end (:meth:`Backend.synchronize`, so that on a GPU the
    time is the device's, as :class:`~svdtrt.runtime.pipeline.StageTimer` takes it).

    Attributes:
        seconds: ``{(component, batch): [seconds, ...]}`` since the last :meth:`take`.
    """

    def __init__(self, backend: Backend):
        self.backend, self.name, self.device = backend, backend.name, backend.device
        self.seconds: dict[Call, list[float]] = defaultdict(list)

    def component(self, name: str) -> ComponentFn:
        fn = self.backend.component(name)
        if name not in UNET_COMPONENTS:
            return fn

        def timed(inputs):
            self.backend.synchronize()
            start = time.perf_counter()
            outputs = fn(inputs)
            self.backend.synchronize()
            self.seconds[(name, int(inputs["sample"].shape[0]))].append(time.perf_counter() - start)
            return outputs

        return timed

    def take(self) -> dict[Call, list[float]]:
        """The call times since the last take, and forget them."""
        taken, self.seconds = dict(self.seconds), defaultdict(list)
        return taken

    def synchronize(self) -> None:
        self.backend.synchronize()

    def close(self) -> None:
        self.backend.close()


class CostModel:
    """Predicted seconds per clip of a candidate, from what has been measured so far.

    Args:
        bundle: the opened bundle (the UNet config and dims the FLOPs are counted with).
        base: the clip's settings (size, guidance scale: which calls are batch 2).
    """

    def __init__(self, bundle, base: SamplingSettings):
        self.base = base
        self._unet_config, self._dims = bundle.manifest.configs["unet"], bundle.dims
        self.call_seconds: dict[str, dict[Call, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.fixed_seconds: dict[str, list[float]] = defaultdict(list)
        self._flops: dict[Call, int] = {}

    def call_flops(self, call: Call) -> int:
        """FLOPs of one UNet call at the clip's size (counted once per call kind: about a second at
        svd-xt sizes)."""
        if call not in self._flops:
            b = self.base
            self._flops[call] = unet_call_flops(self._unet_config, self._dims, call[0], call[1], b.frames, b.height,
                                                b.width)
        return self._flops[call]

    def calls(self, c: ProfileSettings) -> list[Call]:
        """The UNet calls of candidate ``c``'s clip, in order."""
        return planned_unet_calls(clip_settings(self.base, c))

    def unet_flops(self, c: ProfileSettings) -> int:
        """UNet FLOPs per clip of candidate ``c`` (counted)."""
        return sum(self.call_flops(call) for call in self.calls(c))

    def add(self, precision: str, calls: dict[Call, list[float]], fixed: list[float]) -> None:
        """Record measured seconds: per UNet call (by component and batch) and per clip outside them."""
        for call, seconds in calls.items():
            self.call_seconds[precision][call] += list(seconds)
        self.fixed_seconds[precision] += list(fixed)

    def _rate(self, precision: str) -> float | None:
        """Median seconds per FLOP over the timed calls of ``precision``, else of fp32."""
        for p in (precision, "fp32"):
            known = self.call_seconds.get(p)
            if known:
                return float(np.median([np.median(s) / self.call_flops(call) for call, s in known.items()]))
        return None

    def call_cost(self, precision: str, call: Call) -> float:
        """Seconds of one call: its measured median, else its FLOPs at the precision's rate."""
        seconds = self.call_seconds.get(precision, {}).get(call)
        if seconds:
            return float(np.median(seconds))
        rate = self._rate(precision)
        return 0.0 if rate is None else rate * self.call_flops(call)

    def predict(self, c: ProfileSettings) -> float:
        """Predicted seconds per clip of candidate ``c`` (0 before anything was measured: the
        order is then the FLOP order, which :meth:`unet_flops` gives)."""
        fixed = self.fixed_seconds.get(c.precision) or self.fixed_seconds.get("fp32") or [0.0]
        return float(np.median(fixed)) + sum(self.call_cost(c.precision, call) for call in self.calls(c))
