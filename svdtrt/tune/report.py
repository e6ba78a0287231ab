"""A tune's result files in its ``--out`` folder (:data:`~svdtrt.tune.folder.RESULT_FILES`):
``results.json`` (:meth:`TuneResults.to_json`), ``results.md`` (the answer per floor, the Pareto
front and every candidate measured) and ``pareto.png`` (seconds per clip against worst-frame
PSNR), each published whole."""

from __future__ import annotations

import json
from pathlib import Path

from .folder import TuneFolder
from .results import CandidateResult, TuneResults


def write_results(results: TuneResults, folder: TuneFolder) -> None:
    """Write :data:`~svdtrt.tune.folder.RESULT_FILES` into the tune's folder (each replaces the
    previous run's whole)."""
    folder.publish("results.json", lambda part: part.write_text(json.dumps(results.to_json(), indent=2) + "\n"))
    folder.publish("results.md", lambda part: part.write_text(markdown(results)))
    folder.publish("pareto.png", lambda part: plot_pareto(results, part))


def _s(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.3f}"


def _quality(q: tuple[float, float] | None) -> tuple[str, str]:
    return ("", "") if q is None else (f"{q[0]:.1f}", f"{q[1]:.4f}")


def _speedup(results: TuneResults, r: CandidateResult) -> str:
    seconds = r.seconds(results.images)
    return f"{results.reference.seconds(results.images) / seconds:.2f}" if seconds else ""


def markdown(results: TuneResults) -> str:
    """The results as Markdown."""
    images = results.images
    c = results.base
    complete = results.complete()
    first_only = [r for r in results.candidates if r.tuning and not r.complete(images)]
    untouched = [r for r in results.candidates if not r.tuning]
    loads = "; ".join(f"run {run.run}: {run.records} clip(s), 1-minute load {run.load_min}-{run.load_max}"
                      for run in results.runs)
    lines = [
        f"# svdtrt tune: {results.source} ({results.bundle_path})",
        "",
        f"- command: `{results.command}`" if results.command else "- command: (API call)",
        f"- machine: {results.machine.summary()}",
        f"- clips used, by the run that made them: {loads}",
        (f"- backend {results.backend}; clip: {c.frames} frames, {c.width}x{c.height}, seed {c.seed} "
        "(image i: seed + i), guidance "
        f"{c.min_guidance_scale}-{c.max_guidance_scale}"),
        (f"- tuning images: {', '.join(i.name for i in images)} (first passes on {images[0].name}); held out: "
        f"{', '.join(i.name for i in results.held_out_images) or 'none'}"),
        (f"- search: {len(results.candidates)} candidates; {len(complete)} measured on every image, "
        f"{len(first_only)} on the first only, {len(untouched)} not measured; {results.clips_made} clips made by "
        f"this run, {results.clips_reused} taken from the journal; {results.seconds / 60:.1f} min"),
        "",
        ("Quality is the worst frame over the images against the reference, the full-compute fp32 clip "
        "of the same backend and seeds; seconds are the median per clip over a candidate's clips."),
    ]
    if results.stopped_by_budget:
        lines += ["", ("**The time budget ended the search**: the answers below are the best measured so far; "
                      "run the same command again to continue.")]
    lines += ["", "## Recommendation per floor", "",
              ("| profile | floor | settings | s/clip | x exact | PSNR dB | SSIM | held-out PSNR dB | held-out SSIM "
              "| UNet GFLOP/clip |"),
              "|---|---|---|---|---|---|---|---|---|---|"]
    for rec in results.recommendations:
        r = rec.result
        q, h = _quality(r.quality(images)), _quality(r.quality(results.held_out_images, held_out=True))
        lines.append(f"| {rec.floor.name} | {rec.floor.describe()} | {r.label} | {_s(r.seconds(images))} "
                     f"| {_speedup(results, r)} | {q[0]} | {q[1]} | {h[0]} | {h[1]} | {r.unet_flops / 1e9:.1f} |")
    lines += ["", "## Pareto front", "",
              "Candidates measured on every image that no other beats in both seconds and PSNR, fastest first.", "",
              "| settings | s/clip | x exact | PSNR dB | SSIM | UNet GFLOP/clip | x fewer FLOPs |",
              "|---|---|---|---|---|---|---|"]
    for r in results.front():
        q = _quality(r.quality(images))
        lines.append(f"| {r.label} | {_s(r.seconds(images))} | {_speedup(results, r)} | {q[0]} | {q[1]} "
                     f"| {r.unet_flops / 1e9:.1f} | {results.reference.unet_flops / r.unet_flops:.2f} |")
    lines += ["", "## Every candidate", "",
              ("In the order the search took them up; PSNR and SSIM over the images measured (the first only, "
              "for a first pass)."), "",
              "| settings | status | predicted s | s/clip | PSNR dB | SSIM | images | UNet GFLOP/clip |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results.candidates:
        q = _quality(r.quality(images))
        lines.append(f"| {r.label} | {r.status} | {_s(r.predicted_seconds)} | {_s(r.seconds(images))} | {q[0]} "
                     f"| {q[1]} | {len(r.clips(images))} | {r.unet_flops / 1e9:.1f} |")
    return "\n".join(lines) + "\n"


def plot_pareto(results: TuneResults, path: Path) -> None:
    """Median seconds per clip against worst-frame PSNR: filled points measured on every image,
    hollow ones on the first only (an upper bound of their PSNR); the front as a step line; the
    floors as dashed lines; the reference (identical, infinite PSNR) as a vertical line."""
    # A Figure of its own, not pyplot's: no global backend or figure state is touched.
    from matplotlib.figure import Figure

    images = results.images
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    ax.axvline(results.reference.seconds(images), color="grey", linestyle="--", linewidth=0.8,
               label="reference (exact)")
    measured = [r for r in results.candidates if r.tuning and r is not results.reference]
    for done in (True, False):
        rows = [r for r in measured if r.complete(images) == done]
        ax.scatter([r.seconds(images) for r in rows], [r.quality(images)[0] for r in rows], s=28,
                   facecolors="C0" if done else "none", edgecolors="C0",
                   label="every image" if done else "first image only")
    front = [r for r in results.front() if r is not results.reference]
    if front:
        ax.step([r.seconds(images) for r in front], [r.quality(images)[0] for r in front], where="post",
                color="C1", label="Pareto front")
    for i, floor in enumerate(f for f in results.floors if not f.identical and f.min_psnr_db is not None):
        ax.axhline(floor.min_psnr_db, color=f"C{i + 2}", linestyle=":", label=f"{floor.name} floor")
    for rec in results.recommendations:
        r = rec.result
        if r is not results.reference:
            ax.annotate(f"{rec.floor.name}: {r.label}", (r.seconds(images), r.quality(images)[0]),
                        textcoords="offset points", xytext=(5, 5), fontsize="x-small")
    ax.set_xlabel("seconds per clip (median)")
    ax.set_ylabel("worst-frame PSNR vs full-compute fp32 (dB)")
    ax.set_title(f"svdtrt tune: {results.source}, {results.backend}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
