"""Backends: each turns a bundle component into a callable from named input tensors to named
output tensors, so the sampling loop never knows which one it drives (docs/architecture.md,
"The runtime"). One module per backend, as Polygraphy's ``backend/{onnxrt,trt}``:

- ``torch`` (:mod:`.pytorch`): the reference, the source model's PyTorch modules.
- ``onnxruntime`` (:mod:`.onnxrt`): the bundle's graphs on ONNX Runtime's CPU provider;
  ``onnxruntime-cuda`` and ``onnxruntime-trt`` put them on its CUDA or TensorRT execution
  provider where onnxruntime-gpu is installed.
- ``tensorrt`` (:mod:`.trt`): the bundle's TensorRT engines.

Each backend module is imported only when its backend is created.
"""

from __future__ import annotations

from ...errors import BackendUnavailableError, InputError
from ...precisions import PRECISIONS
from ...precisions import precision as lookup_precision
from .base import Backend, ComponentFn, Recorder

#: ONNX Runtime execution providers of each ``onnxruntime*`` backend, first choice first.
ORT_PROVIDERS = {
    "onnxruntime": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnxruntime-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
BACKENDS = ("torch", *ORT_PROVIDERS, "tensorrt")


def on_gpu(name: str, device: str = "cpu") -> bool:
    """Whether backend ``name`` computes on a GPU: ``tensorrt``, an ``onnxruntime*`` backend whose
    first provider is a GPU's (:data:`ORT_PROVIDERS`), ``torch`` on ``device="cuda"``; False for a
    name not in :data:`BACKENDS`."""
    if name == "torch":
        return device == "cuda"
    if name in ORT_PROVIDERS:
        return ORT_PROVIDERS[name][0] != "CPUExecutionProvider"
    return name == "tensorrt"


def create_backend(name: str, bundle, precision: str = "fp32", model=None, device: str = "cpu",
                   cuda_graph: bool = False, one_engine_at_a_time: bool = False,
                   threads: int | None = None) -> Backend:
    """Create backend ``name`` for ``bundle``.

    Args:
        name: one of :data:`BACKENDS`.
        bundle: the opened bundle.
        precision: a precision of :mod:`svdtrt.precisions` that the backend runs (its
            ``backends``): graphs or engines (``onnxruntime*``, ``tensorrt``), or the module
            dtype (``torch``: fp32 or fp16).
        model: the source :class:`SvdModel` for ``torch``, checked against the bundle's config
            hashes; loaded from the bundle's manifest if None.
        device: ``cpu`` or ``cuda`` for ``torch``.
        cuda_graph: ``tensorrt`` only: replay a static-profile UNet engine from a CUDA graph.
        one_engine_at_a_time: ``tensorrt`` only: keep only the engine in use loaded.
        threads: intra-op threads of ``onnxruntime`` sessions (None: its default). PyTorch's are
            process-wide: set them with ``torch.set_num_threads``.
    Raises:
        InputError: unknown backend name, or a precision the backend does not run.
        BundleError: ``model`` is not the bundle's source model.
        BackendUnavailableError: the backend needs a package or GPU this machine lacks.
    """
    if name not in BACKENDS:
        raise InputError(f"unknown backend '{name}': choose from {', '.join(BACKENDS)}")
    p = lookup_precision(precision)
    if name not in p.backends:
        runs = [n for n, q in PRECISIONS.items() if name in q.backends]
        raise InputError(f"the {name} backend runs {', '.join(runs)}, not {precision}")
    if name == "torch":
        import torch

        from ...models.loading import reference_model
        from .pytorch import TorchBackend

        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"the torch backend on cuda needs a CUDA GPU and a CUDA build of torch "
                                          f"(torch {torch.__version__} sees none); use --device cpu")
        return TorchBackend(reference_model(bundle, model), device, getattr(torch, p.dtype),
                            dims=bundle.dims)
    if name in ORT_PROVIDERS:
        from .onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(bundle, precision, ORT_PROVIDERS[name], name=name, threads=threads)
    from .trt import TensorRTBackend

    return TensorRTBackend(bundle, precision, cuda_graph=cuda_graph, one_engine_at_a_time=one_engine_at_a_time)


__all__ = ["BACKENDS", "ORT_PROVIDERS", "Backend", "ComponentFn", "Recorder", "create_backend", "on_gpu"]
