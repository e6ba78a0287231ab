"""``svdtrt tune`` on a bundle (``mid`` for issue 21's targets), then ``svdtrt run --profile fast``
against ``svdtrt run`` (the default, exact settings), side by side in one run.

    svdtrt export mid --out /tmp/tune-mid.bundle
    python benchmarks/tune_mid.py /tmp/tune-mid.bundle --out /tmp/tune-mid --min-psnr 30 --repeat 3

Prints, with the machine's load averages before and after each part:

1. the tune's wall time (``svdtrt tune BUNDLE --min-psnr DB --out OUT --apply --force``, a
   subprocess; it continues OUT's journal if there is one: pass a fresh OUT to time a whole tune)
   and its clip count;
2. seconds per clip (``run --timings``' ``total``) of ``run --profile fast`` and of ``run``,
   alternating, ``--repeat`` each, as separate ``svdtrt run`` processes on the same image, and the
   ratio of the medians;
3. the fast profile's worst frame on the held-out images against its floor minus 3 dB;
4. ``svdtrt verify BUNDLE`` after the tune's ``--apply``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def svdtrt(*args) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "svdtrt", *map(str, args)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        sys.exit(f"svdtrt {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
    return done


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the tune's folder")
    p.add_argument("--min-psnr", type=float, default=30.0)
    p.add_argument("--repeat", type=int, default=3, help="clips of each, alternating (default 3)")
    p.add_argument("--image", help="the clip's image (default: the astronaut sample photo)")
    p.add_argument("--skip-tune", action="store_true", help="use the profiles the bundle has")
    args = p.parse_args()

    if not args.skip_tune:
        print(f"1. svdtrt tune {args.bundle} --min-psnr {args.min_psnr:g} --out {args.out} --apply --force ({load()})",
              flush=True)
        start = time.perf_counter()
        done = svdtrt("tune", args.bundle, "--min-psnr", args.min_psnr, "--out", args.out, "--apply", "--force")
        minutes = (time.perf_counter() - start) / 60
        print(done.stdout, end="")
        results = json.loads((args.out / "results.json").read_text())
        print(f"   tune wall time {minutes:.1f} min (target <= 20), {results['clips_made']} clips made, "
              f"{results['clips_reused']} reused ({load()})\n", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = args.image
        if image is None:
            from svdtrt.media.images import sample_image

            image = tmp / "astronaut.png"
            sample_image("astronaut").save(image)
        seconds = {"fast": [], "exact": []}
        print(f"2. svdtrt run --profile fast and svdtrt run, alternating, {args.repeat} each ({load()})", flush=True)
        for i in range(args.repeat):
            for name, options in (("exact", []), ("fast", ["--profile", "fast"])):
                timings = tmp / f"{name}-{i}.json"
                svdtrt("run", args.bundle, "--image", image, "--out", tmp / f"{name}-{i}.mp4", "--timings", timings,
                       *options)
                seconds[name].append(json.loads(timings.read_text())["seconds"]["total"])
        for name, values in seconds.items():
            print(f"   {name:5s}: {', '.join(f'{s:.3f}' for s in values)} s per clip, median "
                  f"{statistics.median(values):.3f} s")
        ratio = statistics.median(seconds["exact"]) / statistics.median(seconds["fast"])
        print(f"   run --profile fast is {ratio:.2f}x faster per clip than run (target >= 1.8) ({load()})\n")

    from svdtrt.bundle.store import Bundle

    fast = Bundle.open(args.bundle).manifest.profiles["fast"]
    q, floor = fast.quality, fast.floor.min_psnr_db
    print(f"3. fast ({fast.settings.describe()}): worst frame {q.min_psnr_db:.1f} dB on "
          f"{', '.join(i.name for i in fast.images)}; held out ({', '.join(i.name for i in fast.held_out_images)}): "
          f"{q.held_out_min_psnr_db:.1f} dB, floor {floor:g} dB minus 3 dB = {floor - 3:g} dB: "
          f"{'holds' if q.held_out_min_psnr_db > floor - 3 else 'DOES NOT HOLD'}")
    print(f"4. svdtrt verify {args.bundle}: {svdtrt('verify', args.bundle).stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
