"""Benchmark results on disk: ``results.json``, ``results.md`` (the tables) and three PNG plots,
``stages.png`` (per-stage breakdown per row), ``tradeoff.png`` (latency versus accuracy) and
``work.png`` (UNet FLOPs and seconds per clip versus accuracy for the work-reduction rows)."""

from __future__ import annotations

import json
from pathlib import Path

from ..publishing import DirectoryTransaction
from .runner import STAGES

FILES = ("results.json", "results.md", "stages.png", "tradeoff.png", "work.png")

_STAGE_LABELS = {"clip": "CLIP", "vae_encode": "VAE encode", "unet": "UNet x steps",
                 "vae_decode": "VAE decode", "other": "other"}


def write_results(results: dict, out: str | Path, force: bool = False) -> Path:
    """Write :data:`FILES` into directory ``out`` (created whole, or left as it was on error).

    Raises:
        InputError: ``out`` exists and ``force`` is false.
    """
    out = Path(out)
    with DirectoryTransaction(out, force=force) as txn:
        (txn.path / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (txn.path / "results.md").write_text(markdown(results))
        plot_stages(results, txn.path / "stages.png")
        plot_tradeoff(results, txn.path / "tradeoff.png")
        plot_work(results, txn.path / "work.png")
        txn.publish()
    return out


def row_label(row: dict) -> str:
    return f"{row['backend']} {row['precision']}"


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.1f}"


def _mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.0f}"


def markdown(results: dict) -> str:
    """The results as Markdown: settings, the measured table, the loop overhead, the skipped rows."""
    s, m = results["settings"], results["machine"]
    lines = [
        f"# svdtrt bench: {results['bundle']['source'].get('name', results['bundle']['path'])}",
        "",
        f"- command: `{results['command']}`" if results.get("command") else "- command: (API call)",
        f"- machine: {m['cpu']}, {m['cpus_usable']} usable cores, {_mib(m['memory_bytes'])} MiB RAM, "
        f"GPUs: {', '.join(m['gpus']) or 'none'}; load average {m['load_average']} at start, "
        f"{m.get('load_average_end')} at end",
        f"- clip: {s['frames']} frames, {s['width']}x{s['height']}, {s['steps']} steps, seed {s['seed']}, "
        f"guidance {s['min_guidance_scale']}-{s['max_guidance_scale']}; {results['warmup']} warm-up and "
        f"{results['repeat']} measured clips per row",
        f"- reference: diffusers StableVideoDiffusionPipeline, fp32, on {results['device']}",
        "",
        "Times are medians over the measured clips in milliseconds (p90 in brackets for the clip); "
        "'x ref' is the reference's clip time over the row's; PSNR and SSIM are the worst frame against "
        "the reference clip.",
        "",
        "| backend | precision | device | clip ms (p90) | x ref | CLIP ms | VAE enc ms | UNet/step ms "
        "| VAE dec ms | loop overhead/step ms (% of UNet) | peak RSS MiB | peak GPU MiB | PSNR dB | SSIM |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        if r["status"] != "measured":
            continue
        st, acc, ov = r["stages"], r["accuracy"], r["overhead"]
        med = {k: v["median"] for k, v in st.items()}
        overhead = f"{_ms(ov['per_step_seconds'])} ({100 * ov['share_of_unet_call']:.2f}%)" if ov else ""
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['device']} "
            f"| {_ms(med['total'])} ({_ms(st['total']['p90'])}) | {r['speedup_vs_reference']:.2f} "
            f"| {_ms(med.get('clip'))} | {_ms(med.get('vae_encode'))} | {_ms(med.get('unet_per_step'))} "
            f"| {_ms(med.get('vae_decode'))} | {overhead} | {_mib(r['memory']['peak_rss_bytes'])} "
            f"| {_mib(r['memory']['peak_gpu_bytes'])} "
            f"| {'reference' if acc is None else format(acc['min_psnr_db'], '.1f')} "
            f"| {'' if acc is None else format(acc['min_ssim'], '.6f')} |")
    quantized = [r for r in results["rows"] if r["status"] == "measured" and r.get("unet_speedup_vs_fp32")
                 and r["precision"] != "fp32"]
    if quantized:
        lines += ["", "UNet call versus the same backend's fp32 graph:", ""]
        lines += [f"- {row_label(r)}: {r['unet_speedup_vs_fp32']:.2f}x" for r in quantized]
    skipped: dict[tuple[str, str], list[str]] = {}  # (backend, reason) -> precisions: each reason once
    for r in results["rows"]:
        if r["status"] == "skipped":
            skipped.setdefault((r["backend"], r["reason"]), []).append(r["precision"])
    lines += work_markdown(results)
    if skipped:
        lines += ["", "Skipped:", "", "| backend | precisions | reason |", "|---|---|---|"]
        lines += [f"| {backend} | {', '.join(precisions)} | {reason.replace('|', '/')} |"
                  for (backend, reason), precisions in skipped.items()]
    return "\n".join(lines) + "\n"


def work_label(work: dict) -> str:
    g = "all" if work["guidance_steps"] is None else work["guidance_steps"]
    return f"{work['scheduler']} {work['steps']} steps, cache {work['cache_interval']}, guidance {g}"


def work_markdown(results: dict) -> list[str]:
    """The work-reduction table: each backend's full-compute row, then its work rows."""
    rows = [r for r in results.get("work_rows", []) if r["status"] == "measured"]
    if not rows:
        return []
    lines = ["", "Fewer and cheaper UNet calls, against the same backend and precision at the base settings "
             "(full compute); clip ms is the median, UNet TFLOP counted per graph at the clip's shape "
             "(svdtrt.models.flops); PSNR and SSIM are the worst frame against the full-compute clip:", "",
             "| backend | precision | scheduler | steps | cache interval | guidance steps | UNet calls | "
             "UNet TFLOP/clip | x fewer FLOPs | clip ms | x faster | PSNR dB | SSIM |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["backend"], r["precision"]): r for r in _measured(results) if r.get("work")}
    shown = set()
    for r in rows:
        key = (r["backend"], r["precision"])
        if key not in shown and key in base:
            shown.add(key)
            b, w = base[key], base[key]["work"]
            lines.append(f"| {key[0]} | {key[1]} | {w['scheduler']} | {w['steps']} | 1 | all | {w['unet_calls']} | "
                         f"{w['unet_flops'] / 1e12:.3f} | 1.00 | {_ms(b['stages']['total']['median'])} | 1.00 | "
                         "full compute | |")
        w, a = r["work"], r["accuracy"]
        g = "all" if w["guidance_steps"] is None else w["guidance_steps"]
        lines.append(f"| {key[0]} | {key[1]} | {w['scheduler']} | {w['steps']} | {w['cache_interval']} | {g} | "
                     f"{w['unet_calls']} | {w['unet_flops'] / 1e12:.3f} | {r['flops_saving_vs_full_compute']:.2f} | "
                     f"{_ms(r['stages']['total']['median'])} | {r['speedup_vs_full_compute']:.2f} | "
                     f"{a['min_psnr_db']:.1f} | {a['min_ssim']:.6f} |")
    return lines


def plot_work(results: dict, path: Path) -> None:
    """Two panels, one point per work row and per full-compute row: worst-frame PSNR against the
    full-compute clip versus UNet TFLOP per clip (left) and versus median seconds per clip (right)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    base = [r for r in _measured(results) if r.get("work") and not r["reference"]]
    rows = [r for r in results.get("work_rows", []) if r["status"] == "measured"]
    for ax, x_of, x_label in ((axes[0], lambda r: r["work"]["unet_flops"] / 1e12, "UNet TFLOP per clip"),
                              (axes[1], lambda r: r["stages"]["total"]["median"], "seconds per clip (median)")):
        for r in base:
            ax.axvline(x_of(r), color="grey", linestyle="--", linewidth=0.8)
        for r in rows:
            y = r["accuracy"]["min_psnr_db"]
            ax.scatter(x_of(r), y, s=40)
            ax.annotate(f"{row_label(r)}: {work_label(r['work'])}", (x_of(r), y), textcoords="offset points",
                        xytext=(4, 4), fontsize="x-small")
        ax.set_xlabel(x_label)
        ax.set_ylabel("worst-frame PSNR vs full compute (dB)")
    axes[0].set_title("work versus accuracy (dashed: full compute)")
    axes[1].set_title("time versus accuracy (dashed: full compute)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _measured(results: dict) -> list[dict]:
    return [r for r in results["rows"] if r["status"] == "measured"]


def plot_stages(results: dict, path: Path) -> None:
    """Horizontal stacked bars: median seconds per stage for each measured row."""
    plt = _pyplot()
    rows = _measured(results)
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.5 * len(rows)))
    labels = [row_label(r) for r in rows]
    left = [0.0] * len(rows)
    for stage in (*STAGES, "other"):
        widths = [max(0.0, r["stages"].get(stage, {"median": 0.0})["median"]) for r in rows]
        ax.barh(labels, widths, left=left, label=_STAGE_LABELS[stage])
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds per clip (median)")
    s = results["settings"]
    ax.set_title(f"per-stage time: {s['frames']} frames {s['width']}x{s['height']}, {s['steps']} steps")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tradeoff(results: dict, path: Path) -> None:
    """Scatter: median clip seconds against the worst-frame PSNR versus the reference, one point
    per measured non-reference row (the reference is a vertical line: its PSNR is infinite)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in _measured(results):
        seconds = r["stages"]["total"]["median"]
        if r["reference"]:
            ax.axvline(seconds, color="grey", linestyle="--", label=f"{row_label(r)} (reference)")
            continue
        ax.scatter(seconds, r["accuracy"]["min_psnr_db"], s=40)
        ax.annotate(row_label(r), (seconds, r["accuracy"]["min_psnr_db"]), textcoords="offset points",
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
