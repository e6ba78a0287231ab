"""A tune's answers as the bundle's named profiles (``svdtrt tune --apply``): one manifest
transaction (docs/architecture.md, "Tuning", "Transactions")."""

from __future__ import annotations

import datetime
import os

from ..bundle.manifest import (
    Profile,
    ProfileClip,
    ProfileImage,
    ProfileQuality,
    ProfileSpeed,
)
from ..bundle.profiles import measured_with
from ..bundle.store import Bundle, changing
from ..errors import InputError
from .results import TuneImage, TuneResults


def refuse_replacing(bundle: Bundle, names: list[str], force: bool) -> None:
    """Raise :class:`InputError` when the bundle has profiles of ``names`` and ``force`` is false."""
    taken = [n for n in names if n in bundle.manifest.profiles]
    if taken and not force:
        raise InputError(f"bundle '{bundle.path}' already has profile(s) {', '.join(taken)}; pass --force to replace "
                         "them, or tune without --apply")


def profiles_from(results: TuneResults, bundle: Bundle) -> dict[str, Profile]:
    """One profile per floor: its answer's settings, floor, quality and speed (the median seconds
    per clip, and the reference's, from the same tune), the clip, images and machine, and the
    bundle's config hashes and weights it was measured with."""
    images, held_out = results.images, results.held_out_images
    fast = next(f for f in results.floors if f.name == "fast")
    reference, b = results.reference, results.base
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    profiles = {}
    for rec in results.recommendations:
        r = rec.result
        psnr, ssim = r.quality(images)
        held = r.quality(held_out, held_out=True) or (None, None)
        seconds, exact = r.seconds(images), reference.seconds(images)
        profiles[rec.floor.name] = Profile(
            settings=r.candidate,
            floor=None if rec.floor.identical else rec.floor.entry(), tuned_for=fast.entry(),
            quality=ProfileQuality(min_psnr_db=psnr, min_ssim=ssim, held_out_min_psnr_db=held[0],
                                   held_out_min_ssim=held[1]),
            speed=ProfileSpeed(seconds_per_clip=seconds, clips=len(r.clips(images)), exact_seconds_per_clip=exact,
                               speedup_vs_exact=exact / seconds, unet_flops=r.unet_flops,
                               exact_unet_flops=reference.unet_flops),
            clip=ProfileClip(frames=b.frames, height=b.height, width=b.width, seed=b.seed),
            images=[_image(i) for i in images], held_out_images=[_image(i) for i in held_out],
            machine=results.machine.summary(),
            measured_with=measured_with(bundle, ["fp32", r.candidate.precision]), created=created)
    return profiles


def _image(image: TuneImage) -> ProfileImage:
    return ProfileImage(name=image.name, sha256=image.sha256, seed=image.seed)


def apply_profiles(path: str | os.PathLike, profiles: dict[str, Profile], force: bool = False) -> Bundle:
    """Store ``profiles`` in the bundle at ``path`` in one transaction (only the manifest changes).

    Raises:
        InputError: the bundle has a profile of one of the names and ``force`` is false (checked
            again under the bundle's lock), or its folder cannot be written.
        BundleError: not a bundle.
    """
    with changing(path) as staged:
        refuse_replacing(staged.old, list(profiles), force)
        staged.manifest.profiles.update(profiles)
        return staged.commit()
