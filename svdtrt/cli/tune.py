"""``svdtrt tune``: the fastest settings above a quality floor on the user's images, and with
``--apply`` the bundle's named profiles (:mod:`svdtrt.tune`, docs/tuning.md)."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import InputError
from .args import SAMPLING, TUNE_BACKEND

#: The built-in photos a tune uses without ``--images``: three to tune on, the rest held out.
TUNING_SAMPLES, HELD_OUT_SAMPLES = ("astronaut", "chelsea", "coffee"), ("rocket", "camera")


def tune(args) -> int:
    """``svdtrt tune``: the search, its results written to ``--out`` and summed up, and with
    ``--apply`` the answers stored as profiles; exit code 0. Every option, the images, the
    profile names and each precision's host memory are checked before the first clip."""
    import shlex

    from ..bundle.store import Bundle
    from ..models.loading import load_model, reference_model
    from ..runtime.measure import torch_threads
    from ..runtime.settings import SamplingSettings
    from ..tune import (
        TuneJob,
        apply_profiles,
        candidates,
        floors,
        profiles_from,
        refuse_replacing,
        run_tune,
    )

    if args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget > 0):
        raise InputError(f"--time-budget must be a number of minutes above 0, got {args.time_budget}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    bundle = Bundle.open(args.bundle)
    choice = TUNE_BACKEND.parse(args)
    floor_list = floors(args.min_psnr, args.min_ssim)
    base = SamplingSettings.for_bundle(bundle, refuse_outside_range=None, seed=args.seed)
    space = candidates(bundle, choice.backend, base, args.precisions, args.schedulers, args.cache_interval,
                       args.guidance_steps)
    images, held_out = _images(args.images, args.held_out, args.seed)
    if args.apply:
        refuse_replacing(bundle, [f.name for f in floor_list], args.force)
    precisions = list(dict.fromkeys(c.precision for c in space))
    SAMPLING.before_sampling(bundle, base, [(choice.backend, p, choice.device) for p in precisions])
    model = reference_model(bundle, load_model(choice.model)) if choice.model else None
    job = TuneJob(bundle=bundle, backend=choice.backend, base=base, candidates=space, floors=floor_list,
                  images=images, held_out=held_out, out=args.out, device=choice.device,
                  backend_options={"cuda_graph": choice.cuda_graph,
                                   "one_engine_at_a_time": choice.one_engine_at_a_time},
                  threads=args.threads, model=model,
                  time_budget_s=None if args.time_budget is None else args.time_budget * 60,
                  exhaustive=args.exhaustive, force=args.force, command=shlex.join(["svdtrt", *args.argv]))
    with torch_threads(args.threads):
        results = run_tune(job, progress=True)
    _print_summary(results, args.out)
    if args.apply:
        apply_profiles(bundle.path, profiles_from(results, bundle), args.force)
        names = ", ".join(r.floor.name for r in results.recommendations)
        print(f"profiles {names} written to {bundle.path}: pass --profile NAME to run, serve, batch or bench "
              f"('svdtrt info {shlex.quote(str(bundle.path))}' lists them)")
    return 0


def _images(folder: Path | None, held_out: Path | None, seed: int) -> tuple[list, list]:
    """The tuning and held-out images as (TuneImage, RGB image) pairs; image i of both lists, in
    order, uses ``seed + i``."""
    from ..media.images import image_sha256, list_images, load_image, sample_image
    from ..tune import TuneImage

    if folder is None:
        tuning = [(name, sample_image(name)) for name in TUNING_SAMPLES]
        checked = [(name, sample_image(name)) for name in HELD_OUT_SAMPLES] if held_out is None else None
    else:
        tuning = [(p.name, load_image(p)) for p in list_images(folder)]
        checked = None
    if checked is None:
        checked = [(p.name, load_image(p)) for p in list_images(held_out)] if held_out else []
    named = [(TuneImage(name, image_sha256(image), seed + i), image) for i, (name, image) in
             enumerate(tuning + checked)]
    return named[:len(tuning)], named[len(tuning):]


def _print_summary(results, out: Path) -> None:
    images = results.images
    done = len(results.complete())
    first = sum(1 for r in results.candidates if r.tuning and not r.complete(images))
    print(f"tune of {results.bundle_path} on {results.backend}: {len(results.candidates)} candidates, {done} "
          f"measured on every image, {first} on the first only, {len(results.candidates) - done - first} not "
          f"measured; {results.clips_made} clips made, {results.clips_reused} from the journal, in "
          f"{results.seconds / 60:.1f} min (load {results.machine.load_average} at start, "
          f"{results.machine.load_average_end} at end)")
    if results.stopped_by_budget:
        print("the time budget ended the search: these are the best answers so far; the same command continues it")
    exact = results.reference.seconds(images)
    for rec in results.recommendations:
        r = rec.result
        psnr, ssim = r.quality(images)
        held = r.quality(results.held_out_images, held_out=True)
        held_text = f"; held out {held[0]:.1f} dB / {held[1]:.4f}" if held and r is not results.reference else ""
        print(f"  {rec.floor.name:9s} ({rec.floor.describe()}): {r.label}: {r.seconds(images):.3f} s/clip, "
              f"{exact / r.seconds(images):.2f}x exact; worst frame {psnr:.1f} dB / SSIM {ssim:.4f}{held_text}")
    print(f"results in {out / 'results.md'} and {out / 'pareto.png'}")
