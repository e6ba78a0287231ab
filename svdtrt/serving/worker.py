"""One warm backend: what a Ray Serve replica or a batch worker holds for its whole life.

A :class:`ClipMaker` opens the bundle and its backend once, loads every component (ONNX Runtime
sessions, TensorRT engines) before the first clip, and then makes clips with the same
:class:`~svdtrt.runtime.pipeline.SvdPipeline` that ``svdtrt run`` uses, so the same seed and
settings give the same frames. :class:`WorkerOptions` says what to load and which Ray resources
that needs: one GPU for a GPU backend, CPUs otherwise (and as many ONNX Runtime and PyTorch
threads as CPUs given).
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..runtime.backends import on_gpu
from ..specs import CACHING_COMPONENTS, COMPONENTS

log = logging.getLogger(__name__)

#: Clip formats a replica or worker encodes: ``run``'s mp4, and ``--save-frames``'s float32
#: ``[F, H, W, 3]`` in [0, 1] as ``.npy``.
FORMATS = {"mp4": "video/mp4", "npy": "application/x-npy"}


@dataclass(frozen=True)
class WorkerOptions:
    """What each replica or worker loads, and the Ray resources it asks for.

    Attributes:
        bundle: the bundle's path, the same on every node (shared storage, or a copy per node).
        backend, precision, device, model, cuda_graph, one_engine_at_a_time: as ``svdtrt run``'s
            options of those names.
        cpus: CPUs each replica or worker asks Ray for (fractions allowed); ONNX Runtime's
            intra-op threads and PyTorch's threads are set to it, rounded down (at least 1).
    """

    bundle: str
    backend: str = "onnxruntime"
    precision: str = "fp32"
    device: str = "cpu"
    model: str | None = None
    cuda_graph: bool = False
    one_engine_at_a_time: bool = False
    cpus: float = 1.0

    @property
    def needs_gpu(self) -> bool:
        """Whether the backend computes on a GPU (:func:`~svdtrt.runtime.backends.on_gpu`): each
        replica or worker then asks Ray for one."""
        return on_gpu(self.backend, self.device)

    @property
    def threads(self) -> int:
        return max(1, math.floor(self.cpus))

    def ray_resources(self) -> dict:
        """``ray_actor_options`` / actor ``options``: ``num_cpus``, and ``num_gpus`` 1 for a GPU
        backend (Ray then sets ``CUDA_VISIBLE_DEVICES`` to that one GPU: the process sees it as
        device 0)."""
        return {"num_cpus": self.cpus, "num_gpus": 1 if self.needs_gpu else 0}


class ClipMaker:
    """The bundle, its backend and the sampling pipeline, loaded once.

    Args:
        options: what to load.
    Raises:
        BundleError: the bundle is missing, corrupt, or lacks the precision's graphs or engines.
        BackendUnavailableError: the backend needs a package or GPU this machine lacks.
        InputError: a precision the backend does not run, or ``model`` is not the bundle's.
    """

    def __init__(self, options: WorkerOptions):
        import torch

        from ..bundle.store import Bundle
        from ..models.loading import load_model, reference_model
        from ..runtime.backends import create_backend
        from ..runtime.pipeline import SvdPipeline

        self.options = options
        # Each replica or worker is its own process: PyTorch's process-wide thread count is its own.
        torch.set_num_threads(options.threads)
        self.bundle = Bundle.open(options.bundle)
        model = reference_model(self.bundle, load_model(options.model)) if options.model else None
        self.backend = create_backend(options.backend, self.bundle, options.precision, model=model,
                                      device=options.device, cuda_graph=options.cuda_graph,
                                      one_engine_at_a_time=options.one_engine_at_a_time, threads=options.threads)
        if not options.one_engine_at_a_time:
            for name in components_to_load(self.bundle, options.backend, options.precision):
                self.backend.component(name)  # sessions and engines load now, not in the first request
        self.pipeline = SvdPipeline(self.backend, self.bundle)
        log.info("%s (%s) loaded from %s with %d threads", options.backend, options.precision, options.bundle,
                 options.threads)

    def make(self, image, settings, cancel=None):
        """A :class:`~svdtrt.runtime.pipeline.Clip` from ``image`` (RGB PIL image) with ``settings``
        (checked :class:`~svdtrt.runtime.pipeline.SamplingSettings`); ``cancel``, a
        ``threading.Event``, stops sampling before the next step once set (raising
        :class:`~svdtrt.errors.ClipCancelled`)."""
        return self.pipeline(image, settings, cancel=cancel)


def components_to_load(bundle, backend: str, precision: str) -> list[str]:
    """The components a replica loads before its first request: SVD's four, and the block-caching
    graphs (``--cache-interval``) where the bundle has them for ``backend`` and ``precision``
    (engines for ``tensorrt``, graphs for ``onnxruntime*``; the ``torch`` backend makes them from the
    source model)."""
    def available(name: str) -> bool:
        if name not in CACHING_COMPONENTS or backend == "torch":
            return True
        if backend == "tensorrt":
            return f"{name}.{precision}" in bundle.manifest.engines
        entry = bundle.manifest.components.get(name)
        return entry is not None and precision in entry.graphs

    return [name for name in COMPONENTS if available(name)]


def encode_clip(frames, fmt: str, fps: int) -> bytes:
    """``frames`` (float32 [F, H, W, 3] in [0, 1]) as the bytes of ``run``'s files: an H.264 mp4
    at ``fps`` (``fmt="mp4"``) or the ``--save-frames`` ``.npy`` (``fmt="npy"``), written by the
    same writers (:mod:`svdtrt.media.video`)."""
    from ..media.video import save_frames, write_mp4

    with tempfile.TemporaryDirectory(prefix="svdtrt-clip-") as folder:
        path = Path(folder) / f"clip.{fmt}"
        if fmt == "mp4":
            write_mp4(frames, path, fps=fps)
        else:
            save_frames(frames, path)
        return path.read_bytes()
