"""Run the benchmark: diffusers' own pipeline as the reference row, then every backend and
precision asked for, each over the same image, settings and seed, in one process and one run.

A row is measured as: ``warmup`` clips that are not recorded, then ``repeat`` clips whose
per-stage seconds give the median and 90th percentile. Peak memory covers the whole row,
creating the backend included. Each clip is compared frame by frame with the reference
clip (PSNR, SSIM; :func:`svdtrt.media.metrics.clip_metrics`).
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import PIL.Image
import torch

from ..errors import BackendUnavailableError, BundleError, EngineError, InputError
from ..media.images import image_sha256
from ..media.metrics import clip_metrics
from ..models.flops import clip_unet_flops
from ..precisions import NAMES
from ..progress import ticking
from ..runtime import backends as runtime_backends
from ..runtime.backends import BACKENDS
from ..runtime.measure import PeakMemory, load_average, machine_info, order_stats, torch_threads
from ..runtime.pipeline import SamplingSettings, StageTimer, SvdPipeline
from ..runtime.schedulers import use_scheduler
from .results import BenchResults, Overhead, Row, Work

log = logging.getLogger(__name__)

#: Precisions in the order rows and plots list them (the registry, :mod:`svdtrt.precisions`).
PRECISIONS = NAMES
#: The reference row: diffusers' ``StableVideoDiffusionPipeline`` over the source model, fp32.
REFERENCE = "diffusers"
#: The four component stages, in pipeline order; ``other`` is the rest of a clip.
STAGES = ("clip", "vae_encode", "unet", "vae_decode")

_VERSIONS = ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
             "polygraphy", "numpy")


def bundle_precisions(bundle) -> list[str]:
    """The graph precisions the bundle holds for any component, in :data:`PRECISIONS` order."""
    return bundle.precisions()


def run_benchmark(bundle, image: PIL.Image.Image, settings: SamplingSettings, model,
                  backends: list[str] | None = None, precisions: list[str] | None = None,
                  warmup: int = 1, repeat: int = 3, device: str = "cpu", threads: int | None = None,
                  command: str | None = None, progress: bool = False,
                  work: list[SamplingSettings] | None = None) -> BenchResults:
    """Benchmark ``bundle`` on this machine; see :data:`~svdtrt.benchmark.results.RESULT_SCHEMA` results in ``docs/benchmarks.md``.

    Args:
        bundle: the opened bundle.
        image: RGB conditioning image (resized to the clip size, as diffusers does).
        settings: sampling settings shared by every row.
        model: the bundle's source :class:`svdtrt.models.loading.SvdModel` (reference and ``torch`` rows).
        backends: names from :data:`BACKENDS`; default all.
        precisions: names from :data:`PRECISIONS`; default those the bundle holds.
        warmup, repeat: clips run before measuring (>= 0) and measured (>= 1) per row.
        device: ``cpu`` or ``cuda``: where the reference and the ``torch`` backend run.
        threads: CPU threads for every row: PyTorch's (``torch.set_num_threads``, restored
            afterwards) and ONNX Runtime's intra-op threads; None keeps each library's default.
        command: the command line, recorded in the results.
        work: further settings per backend and precision (another scheduler, block caching,
            guidance truncation), each a row measured like the others, with its UNet calls and
            FLOPs per clip and its accuracy against the same backend's clip at ``settings`` (the
            full-compute clip): ``work_rows``.
    Returns:
        The results: a row per reference/backend/precision (measured, or skipped with a reason)
        and a work row per backend/precision/work setting; every measured row but the
        reference's has its work (scheduler, steps, cache interval, guidance steps, UNet calls
        and FLOPs per clip). ``to_json()`` is ``results.json``.
    Raises:
        InputError: bad counts, an unknown name, or ``cuda`` without a CUDA device.
    """
    with torch_threads(threads):
        return _run(bundle, image, settings, model, backends, precisions, warmup, repeat, device, threads,
                    command, progress, work or [])


def _run(bundle, image, settings, model, backends, precisions, warmup, repeat, device, threads, command,
         progress, work) -> dict:
    from tqdm import tqdm

    if warmup < 0 or repeat < 1:
        raise InputError(f"need --warmup >= 0 and --repeat >= 1, got {warmup} and {repeat}")
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown device '{device}': choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but PyTorch sees no CUDA device here; use --device cpu")
    settings.check(bundle.dims)
    if not settings.full_compute:
        raise InputError("the benchmark's base settings must do the full work (no caching, guidance on every step): "
                         "its clip is what the work-reduction rows are compared with")
    for w in work:
        w.check(bundle.dims)
    backends = backends or list(BACKENDS)
    # fp32 first: TorchBackend casts the shared source modules in place, so an fp16 row before
    # the fp32 one would leave the fp32 row with fp16-rounded weights.
    precisions = sorted(precisions, key=PRECISIONS.index) if precisions else bundle_precisions(bundle)
    start = time.perf_counter()
    results = BenchResults(
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), command=command, machine=machine_info(), versions=_versions(),
        bundle={"path": str(bundle.path), "source": bundle.manifest.source.model_dump(),
                "precisions": bundle_precisions(bundle)},
        settings=dict(vars(settings)), image={"size": list(image.size), "sha256": image_sha256(image)},
        warmup=warmup, repeat=repeat, device=device, threads=threads, work=[dict(vars(w)) for w in work])
    plan = [(b, p) for b in backends for p in precisions]
    # The bar counts clips of the rows that run: a skipped row takes its clips off the total, so the
    # time left is that of the work left.
    # Each clip has a bar of its own over its steps below this one (diffusers' own bar, relabelled,
    # for the reference), cleared when the clip is done; this one ticks through every clip.
    bar = tqdm(total=(1 + len(plan) * (1 + len(work))) * (warmup + repeat), desc="bench", unit="clip",
               disable=not progress)
    with bar, ticking(bar):
        bar.set_postfix_str("diffusers reference")
        reference_row, reference = _reference_row(model, image, settings, device, warmup, repeat, bar)
        results.rows.append(reference_row)
        for name, precision in plan:
            bar.set_postfix_str(f"{name} {precision}")
            counted = bar.n
            row, work_rows = _backend_row(bundle, model, name, precision, device, threads, image, settings, warmup,
                                          repeat, bar, reference, work)
            if not row.measured:
                bar.total -= (warmup + repeat) * (1 + len(work)) - (bar.n - counted)
                bar.refresh()
                log.info("skipped %s %s: %s", name, precision, row.reason)
            results.rows.append(row)
            results.work_rows += work_rows
    _add_ratios(results.rows)
    results.machine.load_average_end = load_average()
    results.seconds = time.perf_counter() - start
    return results


def _reference_row(model, image, settings, device, warmup, repeat, bar) -> tuple[Row, np.ndarray]:
    """diffusers' pipeline, timed per component with forward hooks on the PyTorch modules."""
    memory = PeakMemory()
    memory.reset()
    sync = _DeviceSync(device)
    pipe = model.pipeline().to(device)
    modules = {"clip": model.image_encoder, "vae_encode": model.vae.encoder,
               "unet": model.unet, "vae_decode": model.vae.decoder}
    runs, frames = [], None
    for i in range(warmup + repeat):
        timer = StageTimer(sync, timed=True)
        kwargs = settings.pipeline_kwargs()
        use_scheduler(pipe, settings.scheduler, kwargs["generator"])
        label = _clip_label("diffusers reference", i, warmup, repeat)
        pipe.set_progress_bar_config(desc=label, unit="step", leave=False, disable=bar.disable)
        with _timed_modules(timer, modules), timer.stage("total"):
            frames = pipe(image, output_type="np", **kwargs).frames[0]
        log.info("%s: %s", label, ", ".join(f"{k} {v:.2f} s" for k, v in timer.summary().items()))
        if i >= warmup:
            runs.append(timer.summary())
        bar.update()
    pipe.to("cpu")
    row = _measured_row(REFERENCE, "fp32", device, runs, memory.read(), accuracy=None)
    row.reference = True
    row.note = ("stages are the PyTorch modules' forward calls (forward hooks); pre- and post-processing "
                "are in 'other'")
    return row, np.asarray(frames, dtype=np.float32)


def _backend_row(bundle, model, name, precision, device, threads, image, settings, warmup, repeat, bar,
                 reference, work) -> tuple[Row, list[Row]]:
    """The row of one backend and precision at ``settings``, and one row per ``work`` setting."""
    memory = PeakMemory()
    memory.reset()
    if name == "torch" and precision == "fp16" and not runtime_backends.on_gpu(name, device):
        return Row(name, precision, "skipped", device=device,
                   reason="torch fp16 is benchmarked on CUDA only (--device cuda); CPU half precision "
                          "is not a deployment configuration"), []
    try:
        backend = runtime_backends.create_backend(name, bundle, precision, model=model, device=device,
                                                  threads=threads)
    except (BackendUnavailableError, BundleError, EngineError, InputError) as e:
        # BundleError: a graph of this precision is missing; InputError: the backend does not run
        # this precision.
        return Row(name, precision, "skipped", device=device if name == "torch" else None, reason=str(e)), []
    with backend:  # its sessions, engines or modules are freed before the next row's are made
        pipeline = SvdPipeline(backend, bundle)
        try:
            runs, clip = _clips(pipeline, image, settings, warmup, repeat, bar, f"{name} {precision}")
        except (BackendUnavailableError, BundleError, EngineError, InputError) as e:
            # EngineError: no current engine (tensorrt's default state before 'svdtrt build')
            return Row(name, precision, "skipped", device=device if name == "torch" else None, reason=str(e)), []
        row = _measured_row(name, precision, str(backend.device.type), runs, memory.read(),
                            accuracy=clip_metrics(clip.frames, reference))
        row.work = _work(bundle, settings, clip)
        work_rows = []
        for w in work:
            memory.reset()
            try:
                w_runs, w_clip = _clips(pipeline, image, w, warmup, repeat, bar, f"{name} {precision} {_work_name(w)}")
            except BundleError as e:  # e.g. a bundle exported before block caching
                work_rows.append(Row(name, precision, "skipped", work_row=True, skipped_settings=dict(vars(w)),
                                     reason=str(e)))
                bar.update(warmup + repeat)
                continue
            w_row = _measured_row(name, precision, str(backend.device.type), w_runs, memory.read(),
                                  accuracy=clip_metrics(w_clip.frames, clip.frames))
            w_row.work_row, w_row.work = True, _work(bundle, w, w_clip)
            w_row.reference_clip = "the same backend and precision at the base settings (full compute)"
            w_row.speedup_vs_full_compute = row.median("total") / w_row.median("total")
            w_row.flops_saving_vs_full_compute = row.work.unet_flops / w_row.work.unet_flops
            work_rows.append(w_row)
    return row, work_rows


def _clips(pipeline, image, settings, warmup, repeat, bar, what: str):
    """``warmup`` unrecorded clips, then ``repeat`` recorded: (their timings, the last clip). Each
    clip has a bar over its steps while ``bar`` is shown."""
    runs, clip = [], None
    for i in range(warmup + repeat):
        clip = pipeline(image, settings, timings=True,
                        progress=False if bar.disable else _clip_label(what, i, warmup, repeat))
        if i >= warmup:
            runs.append(clip.timings)
        bar.update()
    return runs, clip


def _clip_label(what: str, i: int, warmup: int, repeat: int) -> str:
    """The label of clip ``i`` (0-based) of a row: ``bench: onnxruntime fp16 warmup clip 1/1``, then
    ``... clip 1/3`` for the measured ones."""
    if i < warmup:
        return f"bench: {what} warmup clip {i + 1}/{warmup}"
    return f"bench: {what} clip {i - warmup + 1}/{repeat}"


def _work_name(settings: SamplingSettings) -> str:
    """A work row's settings in short: ``euler, cache interval 3, guidance steps 12``."""
    parts = [settings.scheduler]
    if settings.cache_interval > 1:
        parts.append(f"cache interval {settings.cache_interval}")
    if settings.guidance_steps is not None:
        parts.append(f"guidance steps {settings.guidance_steps}")
    return ", ".join(parts)


def _work(bundle, settings, clip) -> Work:
    """The work settings of a row and the UNet work of its clip (:func:`svdtrt.models.flops.clip_unet_flops`)."""
    flops = clip_unet_flops(bundle.manifest.configs["unet"], bundle.dims, clip.unet_calls, settings.frames,
                            settings.height, settings.width)
    return Work(scheduler=settings.scheduler, steps=settings.steps, cache_interval=settings.cache_interval,
                guidance_steps=settings.guidance_steps, **flops)


def _measured_row(name, precision, device, runs, memory, accuracy) -> Row:
    stats = {}
    for key in sorted({k for r in runs for k in r}):
        stats[key] = order_stats([r[key] for r in runs if key in r])
    others = [r["total"] - sum(r.get(s, 0.0) for s in STAGES) for r in runs]
    stats["other"] = order_stats(others)
    overhead = _overhead(runs) if "overhead_per_step" in stats else None
    return Row(name, precision, "measured", device=device, stages=stats, overhead=overhead, memory=memory,
               accuracy=accuracy, runs=runs)


def _overhead(runs) -> Overhead:
    """The loop's own cost per denoising step, as a share of the step and of the UNet call (medians)."""
    per_step = np.median([r["overhead_per_step"] for r in runs])
    unet = np.median([r["unet_per_step"] for r in runs])
    return Overhead(per_step_seconds=float(per_step), unet_call_seconds=float(unet),
                    share_of_step=float(per_step / (per_step + unet)), share_of_unet_call=float(per_step / unet))


def _add_ratios(rows: list[Row]) -> None:
    """Per row: clip speed-up over the reference, and UNet-call speed-up over the same backend's fp32."""
    measured = [r for r in rows if r.measured]
    reference = next(r for r in measured if r.reference)
    fp32 = {r.backend: r for r in measured if r.precision == "fp32" and not r.reference}
    for r in measured:
        r.speedup_vs_reference = reference.median("total") / r.median("total")
        base = fp32.get(r.backend)
        r.unet_speedup_vs_fp32 = (base.median("unet_per_step") / r.median("unet_per_step")
                                  if base and not r.reference else None)


class _DeviceSync:
    """The part of a backend :class:`StageTimer` needs, for timing diffusers' pipeline."""

    def __init__(self, device: str):
        self.device = torch.device(device)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@contextlib.contextmanager
def _timed_modules(timer: StageTimer, modules: dict[str, torch.nn.Module]):
    """Time every forward call of each module as stage ``name`` (pre- and post-forward hooks)."""
    handles, open_stages = [], {}

    def hooks(stage):
        def before(_module, _args):
            open_stages[stage] = timer.stage(stage)
            open_stages[stage].__enter__()

        def after(_module, _args, _output):
            open_stages.pop(stage).__exit__(None, None, None)

        return before, after

    for stage, module in modules.items():
        before, after = hooks(stage)
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _versions() -> dict[str, str | None]:
    from ..environment import package_version, tool_versions

    return {**tool_versions(), **{name: package_version(name) for name in _VERSIONS}}
