"""Benchmark results on disk: ``results.json``, ``results.md`` (the tables) and three PNG plots,
``stages.png`` (per-stage breakdown per row), ``tradeoff.png`` (latency versus accuracy) and
``work.png`` (UNet FLOPs and seconds per clip versus accuracy for the work-reduction rows)."""

from __future__ import annotations

import json
from pathlib import Path

from ..publishing import DirectoryTransaction, FolderKind
from .results import BenchResults
from .runner import STAGES

FILES = ("results.json", "results.md", "stages.png", "tradeoff.png", "work.png")
#: bench's output folder: what ``--force`` may replace.
BENCH_FOLDER = FolderKind("a bench results folder", "results.json", FILES)

_STAGE_LABELS = {"clip": "CLIP", "vae_encode": "VAE encode", "unet": "UNet x steps",
                 "vae_decode": "VAE decode", "other": "other"}


def write_results(results: BenchResults, out: str | Path, force: bool = False) -> Path:
    """Write :data:`FILES` into directory ``out`` (created whole, or left as it was on error).

    Raises:
        InputError: ``out`` exists and ``force`` is false, or holds something else than bench's
            results (:data:`BENCH_FOLDER`).
    """
    out = Path(out)
    with DirectoryTransaction(out, BENCH_FOLDER, force=force) as txn:
        (txn.path / "results.json").write_text(json.dumps(results.to_json(), indent=2) + "\n")
        (txn.path / "results.md").write_text(markdown(results))
        plot_stages(results, txn.path / "stages.png")
        plot_tradeoff(results, txn.path / "tradeoff.png")
        plot_work(results, txn.path / "work.png")
        txn.publish()
    return out


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.1f}"


def _mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.0f}"


def markdown(results: BenchResults) -> str:
    """The results as Markdown: settings, the measured table, the loop overhead, the skipped rows."""
    s = results.settings
    lines = [
        f"# svdtrt bench: {results.bundle['source'].get('name', results.bundle['path'])}",
        "",
        f"- command: `{results.command}`" if results.command else "- command: (API call)",
        f"- machine: {results.machine.summary()}",
        f"- clip: {s['frames']} frames, {s['width']}x{s['height']}, {s['steps']} steps, seed {s['seed']}, "
        f"guidance {s['min_guidance_scale']}-{s['max_guidance_scale']}; {results.warmup} warm-up and "
        f"{results.repeat} measured clips per row",
        f"- reference: diffusers StableVideoDiffusionPipeline, fp32, on {results.device}",
        "",
        "Times are medians over the measured clips in milliseconds (p90 in brackets for the clip); "
        "'x ref' is the reference's clip time over the row's; PSNR and SSIM are the worst frame against "
        "the reference clip.",
        "",
        "| backend | precision | device | clip ms (p90) | x ref | CLIP ms | VAE enc ms | UNet/step ms "
        "| VAE dec ms | loop overhead/step ms (% of UNet) | peak RSS MiB | peak GPU MiB | PSNR dB | SSIM |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.measured():
        acc, ov = r.accuracy, r.overhead
        overhead = f"{_ms(ov.per_step_seconds)} ({100 * ov.share_of_unet_call:.2f}%)" if ov else ""
        lines.append(
            f"| {r.backend} | {r.precision} | {r.device} "
            f"| {_ms(r.median('total'))} ({_ms(r.stages['total'].p90)}) | {r.speedup_vs_reference:.2f} "
            f"| {_ms(r.median('clip'))} | {_ms(r.median('vae_encode'))} | {_ms(r.median('unet_per_step'))} "
            f"| {_ms(r.median('vae_decode'))} | {overhead} | {_mib(r.memory.peak_rss_bytes)} "
            f"| {_mib(r.memory.peak_gpu_bytes)} "
            f"| {'reference' if acc is None else format(acc['min_psnr_db'], '.1f')} "
            f"| {'' if acc is None else format(acc['min_ssim'], '.6f')} |")
    quantized = [r for r in results.measured() if r.unet_speedup_vs_fp32 and r.precision != "fp32"]
    if quantized:
        lines += ["", "UNet call versus the same backend's fp32 graph:", ""]
        lines += [f"- {r.label}: {r.unet_speedup_vs_fp32:.2f}x" for r in quantized]
    skipped: dict[tuple[str, str], list[str]] = {}  # (backend, reason) -> precisions: each reason once
    for r in results.rows:
        if not r.measured:
            skipped.setdefault((r.backend, r.reason), []).append(r.precision)
    lines += work_markdown(results)
    if skipped:
        lines += ["", "Skipped:", "", "| backend | precisions | reason |", "|---|---|---|"]
        lines += [f"| {backend} | {', '.join(precisions)} | {reason.replace('|', '/')} |"
                  for (backend, reason), precisions in skipped.items()]
    return "\n".join(lines) + "\n"


def work_label(work) -> str:
    """A :class:`~svdtrt.benchmark.results.Work` in words."""
    g = "all" if work.guidance_steps is None else work.guidance_steps
    return f"{work.scheduler} {work.steps} steps, cache {work.cache_interval}, guidance {g}"


def work_markdown(results: BenchResults) -> list[str]:
    """The work-reduction table: each backend's full-compute row, then its work rows."""
    rows = [r for r in results.work_rows if r.measured]
    if not rows:
        return []
    lines = ["", "Fewer and cheaper UNet calls, against the same backend and precision at the base settings "
             "(full compute); clip ms is the median, UNet TFLOP counted per graph at the clip's shape "
             "(svdtrt.models.flops); PSNR and SSIM are the worst frame against the full-compute clip:", "",
             "| backend | precision | scheduler | steps | cache interval | guidance steps | UNet calls | "
             "UNet TFLOP/clip | x fewer FLOPs | clip ms | x faster | PSNR dB | SSIM |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r.backend, r.precision): r for r in results.measured() if r.work}
    shown = set()
    for r in rows:
        key = (r.backend, r.precision)
        if key not in shown and key in base:
            shown.add(key)
            b, w = base[key], base[key].work
            lines.append(f"| {key[0]} | {key[1]} | {w.scheduler} | {w.steps} | 1 | all | {w.unet_calls} | "
                         f"{w.unet_flops / 1e12:.3f} | 1.00 | {_ms(b.median('total'))} | 1.00 | "
                         "full compute | |")
        w, a = r.work, r.accuracy
        g = "all" if w.guidance_steps is None else w.guidance_steps
        lines.append(f"| {key[0]} | {key[1]} | {w.scheduler} | {w.steps} | {w.cache_interval} | {g} | "
                     f"{w.unet_calls} | {w.unet_flops / 1e12:.3f} | {r.flops_saving_vs_full_compute:.2f} | "
                     f"{_ms(r.median('total'))} | {r.speedup_vs_full_compute:.2f} | "
                     f"{a['min_psnr_db']:.1f} | {a['min_ssim']:.6f} |")
    return lines


def plot_work(results: BenchResults, path: Path) -> None:
    """Two panels, one point per work row and per full-compute row: worst-frame PSNR against the
    full-compute clip versus UNet TFLOP per clip (left) and versus median seconds per clip (right)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    base = [r for r in results.measured() if r.work and not r.reference]
    rows = [r for r in results.work_rows if r.measured]
    for ax, x_of, x_label in ((axes[0], lambda r: r.work.unet_flops / 1e12, "UNet TFLOP per clip"),
                              (axes[1], lambda r: r.median("total"), "seconds per clip (median)")):
        for r in base:
            ax.axvline(x_of(r), color="grey", linestyle="--", linewidth=0.8)
        for r in rows:
            y = r.accuracy["min_psnr_db"]
            ax.scatter(x_of(r), y, s=40)
            ax.annotate(f"{r.label}: {work_label(r.work)}", (x_of(r), y), textcoords="offset points",
                        xytext=(4, 4), fontsize="x-small")
        ax.set_xlabel(x_label)
        ax.set_ylabel("worst-frame PSNR vs full compute (dB)")
    axes[0].set_title("work versus accuracy (dashed: full compute)")
    axes[1].set_title("time versus accuracy (dashed: full compute)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_stages(results: BenchResults, path: Path) -> None:
    """Horizontal stacked bars: median seconds per stage for each measured row."""
    plt = _pyplot()
    rows = results.measured()
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.5 * len(rows)))
    labels = [r.label for r in rows]
    left = [0.0] * len(rows)
    for stage in (*STAGES, "other"):
        widths = [max(0.0, r.median(stage) or 0.0) for r in rows]
        ax.barh(labels, widths, left=left, label=_STAGE_LABELS[stage])
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds per clip (median)")
    s = results.settings
    ax.set_title(f"per-stage time: {s['frames']} frames {s['width']}x{s['height']}, {s['steps']} steps")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tradeoff(results: BenchResults, path: Path) -> None:
    """Scatter: median clip seconds against the worst-frame PSNR versus the reference, one point
    per measured non-reference row (the reference is a vertical line: its PSNR is infinite)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results.measured():
        seconds = r.median("total")
        if r.reference:
            ax.axvline(seconds, color="grey", linestyle="--", label=f"{r.label} (reference)")
            continue
        ax.scatter(seconds, r.accuracy["min_psnr_db"], s=40)
        ax.annotate(r.label, (seconds, r.accuracy["min_psnr_db"]), textcoords="offset points",
                    xytext=(5, 5), fontsize="small")
    ax.set_xlabel("seconds per clip (median)")
    ax.set_ylabel("worst-frame PSNR vs reference (dB)")
    ax.set_title("latency versus accuracy")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    return plt
