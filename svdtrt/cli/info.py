"""``svdtrt info``: what a bundle holds, read from its manifest (no file is hashed: that is
``svdtrt verify``): the model, the clip sizes, the graphs and engines, the calibration sets and the
tuned profiles, each profile with what it was measured on and whether it still fits the bundle."""

from __future__ import annotations


def info(args) -> int:
    """``svdtrt info``: the bundle's contents on stdout; exit code 0."""
    from .. import hints
    from ..bundle.profiles import EXAMPLE_MIN_PSNR_DB, stale_reason
    from ..bundle.store import Bundle

    bundle = Bundle.open(args.bundle)
    m = bundle.manifest
    print(f"bundle {bundle.path}: {m.source.kind} '{m.source.name}', created {m.created}, format {m.format_version}")
    s = m.shapes
    print(f"  clip sizes (min:opt:max): frames {s.frames.min}:{s.frames.opt}:{s.frames.max}, height "
          f"{s.height.min}:{s.height.opt}:{s.height.max}, width {s.width.min}:{s.width.opt}:{s.width.max}")
    print("  graphs:")
    for name, entry in m.components.items():
        print(f"    {name:14s} {', '.join(entry.graphs)}")
    print(f"  engines: {', '.join(m.engines) or 'none'}")
    print(f"  calibration sets: {', '.join(m.calibration) or 'none'}")
    if not m.profiles:
        print(f"  profiles: none ('{hints.tune(bundle.path, EXAMPLE_MIN_PSNR_DB)}' makes them, {EXAMPLE_MIN_PSNR_DB:g} dB "
              "being an example floor)")
        return 0
    print("  profiles (--profile NAME on run, serve, batch, bench):")
    for name, p in m.profiles.items():
        q, speed = p.quality, p.speed
        floor = "identical to the reference" if p.floor is None else p.floor.describe()
        held = ("" if q.held_out_min_psnr_db is None else
                f"; held out ({', '.join(i.name for i in p.held_out_images)}) {q.held_out_min_psnr_db:.1f} dB / "
                f"{q.held_out_min_ssim:.4f}")
        stale = stale_reason(bundle, p)
        print(f"    {name}: {p.settings.backend} {p.settings.describe()}" + (f"  [OUT OF DATE: {stale}]" if stale else ""))
        print(f"      floor {floor}; worst frame {q.min_psnr_db:.1f} dB / SSIM {q.min_ssim:.4f} on "
              f"{', '.join(i.name for i in p.images)}{held}")
        print(f"      {speed.seconds_per_clip:.3f} s/clip (median of {speed.clips}), {speed.speedup_vs_exact:.2f}x "
              f"exact, {speed.unet_flops / 1e9:.1f} UNet GFLOP/clip; {p.clip.frames} frames {p.clip.width}x"
              f"{p.clip.height}, {p.created}, on {p.machine}")
    return 0
