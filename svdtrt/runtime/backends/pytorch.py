"""The ``torch`` backend: the source model's PyTorch modules (the reference)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Mapping

import torch

from ...components import torch_modules
from ...specs import COMPONENTS
from .base import ComponentFn


class TorchBackend:
    """The source model's PyTorch modules, on ``device`` in ``dtype``.

    Args:
        model: an :class:`svdtrt.models.SvdModel`.
        device: ``"cpu"`` or ``"cuda"``; inputs are moved there, outputs come back there.
        dtype: ``torch.float32`` (reference) or ``torch.float16`` (GPU).
        cache_depth: the block-caching depth of ``unet_full`` / ``unet_shallow`` (the bundle's,
            ``bundle.dims.cache_depth``; default the model's).
    """

    name = "torch"

    def __init__(self, model, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 cache_depth: int | None = None):
        self.device, self.dtype = torch.device(device), dtype
        if (self.device.type, dtype) != ("cpu", torch.float32):
            # Module.to() converts in place: work on a copy so that the caller's model (often the
            # fp32 CPU reference of the same run) stays as it was.
            model = dataclasses.replace(model, image_encoder=copy.deepcopy(model.image_encoder),
                                        vae=copy.deepcopy(model.vae), unet=copy.deepcopy(model.unet))
        self._modules = {k: m.to(self.device, dtype) for k, m in torch_modules(model, cache_depth).items()}

    def component(self, name: str) -> ComponentFn:
        module, spec = self._modules[name], COMPONENTS[name]

        @torch.no_grad()
        def run(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            args = [inputs[n].to(self.device, self.dtype) for n in spec.input_names]
            outputs = module(*args)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            return {n: t.float() for n, t in zip(spec.output_names, outputs)}

        return run

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
