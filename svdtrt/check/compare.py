"""The accuracy check: a bundle's graphs against PyTorch, per component and end to end.

Per component, the backend under test is fed the exact inputs the PyTorch modules received
during a real sampling run (recorded by :class:`Recorder`) and its outputs are compared with
theirs. End to end, the clip the backend produces is compared frame by frame with the clip
of diffusers' own ``StableVideoDiffusionPipeline`` for the same seed and settings.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict

import numpy as np
import PIL.Image

from ..graphs.qdq import validate_qdq_graph
from ..media.metrics import clip_metrics, compare_components
from ..models.loading import reference_model
from ..precisions import precision as lookup_precision
from ..progress import ticking
from ..runtime.backends import Recorder, create_backend
from ..runtime.backends.pytorch import TorchBackend
from ..runtime.pipeline import SamplingSettings, SvdPipeline
from ..runtime.schedulers import use_scheduler
from .report import CheckReport, EndToEnd

log = logging.getLogger(__name__)


def check_bundle(bundle, image: PIL.Image.Image, settings: SamplingSettings, backend: str = "onnxruntime",
                 precision: str = "fp32", model=None, progress: bool = False,
                 backend_options: dict | None = None) -> CheckReport:
    """Measure the accuracy of ``backend`` over ``bundle`` against PyTorch and diffusers.

    Args:
        bundle: the opened bundle.
        image: RGB conditioning image.
        settings: the sampling settings of both runs.
        backend, precision: what is checked.
        model: the source :class:`SvdModel`; rebuilt from the manifest's source if None.
        backend_options: further :func:`create_backend` keywords for the backend under test
            (``device``, ``cuda_graph``, ``one_engine_at_a_time``, ``threads``).
        progress: show a progress bar per stage, labelled ``check i/n: <stage>``, and log each
            stage's wall time at INFO.
    Returns:
        The report, with the tested clip's and the reference's frames (``tested_frames``,
        ``reference_frames``: float32 [F, H, W, 3] in [0, 1], e.g. for a picture of both).

    Pass/fail limits are the precision's ``thresholds`` in :mod:`svdtrt.precisions`.
    The end-to-end reference is diffusers' pipeline with the same scheduler; for settings it has
    no counterpart for (block caching, guidance truncation) it is the PyTorch modules' clip
    through svdtrt's loop with the same settings (``end_to_end["reference_clip"]`` says which).
    For a quantized precision on the ``onnxruntime`` backend, the quantized graphs are first
    checked to be symmetric Q/DQ graphs, and the clip is also compared with the clip of the
    bundle's fp32 graphs (``end_to_end["vs_fp32_graphs"]``); every reference is fp32.

    Raises:
        BundleError: the source model's configs differ from those the bundle was exported from.
        BackendUnavailableError: ``backend`` needs a package or GPU this machine lacks (raised
            before any sampling).
        QuantizationError: a quantized graph has no Q/DQ node or a non-zero zero point.
    """
    p = lookup_precision(precision)
    quantized = p.quantized and backend == "onnxruntime"
    qdq = None
    if quantized:  # every component needs a graph of this precision; those with a quantization are Q/DQ
        graphs = {name: bundle.graph(name, precision) for name in bundle.manifest.components}
        qdq = {name: validate_qdq_graph(bundle.path / graph.file, bundle.repair([graph.file]).command)
               for name, graph in graphs.items() if graph.quantization is not None}
    model = reference_model(bundle, model)
    start = time.perf_counter()
    options = backend_options or {}
    tested = create_backend(backend, bundle, precision, model=model, **options)  # first: a missing backend fails fast
    stages = _Stages(3 + settings.full_compute + quantized, progress)
    recorder = Recorder(TorchBackend(model, dims=bundle.dims))
    with stages("PyTorch loop, recording each component's inputs") as label:
        torch_clip = SvdPipeline(recorder, bundle)(image, settings, progress=label)
    if settings.full_compute:
        with stages("diffusers reference") as label:
            reference, reference_clip = _diffusers_clip(model, image, settings, label), "diffusers"
    else:
        reference, reference_clip = torch_clip.frames, "svdtrt loop over the PyTorch modules, same settings"
    with stages(f"{backend} {precision} clip") as label:
        clip = SvdPipeline(tested, bundle)(image, settings, progress=label)
    with stages(f"{backend} {precision} components on the recorded inputs") as label:
        components = compare_components(recorder.calls, tested, progress=label)
    vs_fp32_graphs = None
    if quantized:
        with stages(f"{backend} fp32 clip, for comparison") as label, \
                create_backend(backend, bundle, "fp32", **options) as fp32_graphs:
            fp32_clip = SvdPipeline(fp32_graphs, bundle)(image, settings, progress=label)
        vs_fp32_graphs = clip_metrics(clip.frames, fp32_clip.frames)
    reference = np.asarray(reference, dtype=np.float32)

    limits = vars(p.thresholds)
    vs_diffusers = clip_metrics(clip.frames, reference)
    failures = []
    if vs_diffusers["min_psnr_db"] < limits["clip_min_psnr_db"]:
        failures.append(f"clip PSNR {vs_diffusers['min_psnr_db']:.1f} dB < {limits['clip_min_psnr_db']} dB")
    for name, outputs in components.items():
        for out, m in outputs.items():
            if not m["cosine"] >= limits["component_min_cosine"]:
                failures.append(f"{name}.{out} cosine {m['cosine']:.6f} < {limits['component_min_cosine']}")
    return CheckReport(
        bundle=str(bundle.path), backend=backend, precision=precision, settings=asdict(settings),
        components=components,
        end_to_end=EndToEnd(reference="fp32", reference_clip=reference_clip, vs_diffusers=vs_diffusers,
                            torch_loop_vs_diffusers=clip_metrics(torch_clip.frames, reference),
                            identical_to_diffusers=bool(np.array_equal(clip.frames, reference)),
                            vs_fp32_graphs=vs_fp32_graphs),
        timings=clip.timings, check_seconds=time.perf_counter() - start, qdq=qdq or None,
        thresholds=dict(limits), failures=failures, tested_frames=clip.frames, reference_frames=reference)


def _diffusers_clip(model, image: PIL.Image.Image, settings: SamplingSettings, label: str | bool) -> np.ndarray:
    """diffusers' ``StableVideoDiffusionPipeline`` at ``settings``: frames (F, H, W, 3) float in
    [0, 1]. ``label``: a bar over its denoising steps, its clock ticking through the encoders
    before the first step, each step and the decode after the last (diffusers' own bar is redrawn
    only between steps, and not at all during the decode: a 26 s silence of ``check`` on ``mid``,
    benchmarks/silences.py); False shows nothing."""
    from tqdm import tqdm

    pipe, kwargs = model.pipeline(), settings.pipeline_kwargs()
    pipe.set_progress_bar_config(disable=True)
    use_scheduler(pipe, settings.scheduler, kwargs["generator"])
    with tqdm(desc=label or None, unit="step", disable=not label) as bar, ticking(bar):
        bar.set_postfix_str("encoding the image")

        def on_step_end(pipe, i, t, tensors: dict) -> dict:
            bar.total = pipe.num_timesteps  # the scheduler's timesteps: 2 model calls per step for Heun
            bar.update()
            bar.set_postfix_str("decoding" if bar.n == bar.total else "")
            return tensors

        return pipe(image, output_type="np", callback_on_step_end=on_step_end, **kwargs).frames[0]


class _Stages:
    """Numbered stages of a check: each gives its progress bar a label (``check 2/4: PyTorch
    loop``) and logs its wall time at INFO (what ``-v`` shows)."""

    def __init__(self, total: int, progress: bool):
        self.total, self.progress, self.done = total, progress, 0

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.done += 1
        label = f"check {self.done}/{self.total}: {name}"
        start = time.perf_counter()
        yield label if self.progress else False
        log.info("%s took %.1f s", label, time.perf_counter() - start)
