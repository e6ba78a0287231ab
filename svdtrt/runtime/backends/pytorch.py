"""The ``torch`` backend: the source model's PyTorch modules (the reference)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Mapping

import torch

from ...models.modules import FP32_INPUTS, VaeEncoder, torch_modules
from ...specs import COMPONENTS, runs_fp32_in_fp16
from .base import Backend, ComponentFn


class TorchBackend(Backend):
    """The source model's PyTorch modules, on ``device`` in ``dtype``, as diffusers runs them.

    In fp16, a component the model's config keeps in fp32 (:func:`svdtrt.specs.runs_fp32_in_fp16`:
    SVD's VAE encoder, ``force_upcast``) runs in fp32 from its own copy of the VAE, and the
    UNet's ``timestep`` stays fp32 (:data:`svdtrt.models.modules.FP32_INPUTS`).

    Args:
        model: an :class:`svdtrt.models.loading.SvdModel`.
        device: ``"cpu"`` or ``"cuda"``; inputs are moved there, outputs come back there (float32).
        dtype: ``torch.float32`` (reference) or ``torch.float16`` (GPU).
        dims: the :class:`svdtrt.specs.ModelDims` whose cache depth and layer ``unet_full`` /
            ``unet_shallow`` take (the bundle's, ``bundle.dims``; default the model's).
    Attributes:
        dtypes: ``{component: dtype it computes in}``.
    """

    name = "torch"

    def __init__(self, model, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 dims=None):
        self.device, self.dtype = torch.device(device), dtype
        self.dtypes = {name: torch.float32 if dtype == torch.float16 and runs_fp32_in_fp16(spec, model.configs())
                       else dtype for name, spec in COMPONENTS.items()}
        if (self.device.type, dtype) != ("cpu", torch.float32):
            # Module.to() converts in place: work on a copy so that the caller's model (often the
            # fp32 CPU reference of the same run) stays as it was.
            model = dataclasses.replace(model, image_encoder=copy.deepcopy(model.image_encoder),
                                        vae=copy.deepcopy(model.vae), unet=copy.deepcopy(model.unet))
        modules = torch_modules(model, dims)
        if self.dtypes["vae_encoder"] != self.dtypes["vae_decoder"]:
            # The two VAE components share one module; the encoder gets its own copy in its dtype
            # (without the decoder it never runs), as diffusers upcasts the VAE around encoding.
            vae = copy.copy(model.vae)
            vae._modules = {k: copy.deepcopy(m) for k, m in model.vae._modules.items() if k != "decoder"}
            modules["vae_encoder"] = VaeEncoder(vae).eval()
        self._modules = {k: m.to(self.device, self.dtypes[k]) for k, m in modules.items()}

    def component(self, name: str) -> ComponentFn:
        if name not in self._modules:
            raise RuntimeError(f"the torch backend was closed; create another to run {name}")
        module, spec, dtype = self._modules[name], COMPONENTS[name], self.dtypes[name]

        @torch.no_grad()
        def run(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            args = [inputs[n].to(self.device, torch.float32 if n in FP32_INPUTS else dtype)
                    for n in spec.input_names]
            outputs = module(*args)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            return {n: t.float() for n, t in zip(spec.output_names, outputs)}

        return run

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self._modules = {}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
