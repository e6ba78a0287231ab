"""Export at production scale: per component, wall time, peak host memory and output size of
the fp32 and fp16 graphs, and each full-size fp16 graph's agreement with PyTorch fp32.

    PYTHONPATH=$PWD python benchmarks/export_scale.py svd-xt --out /tmp/svd-xt-bundle \
        --json docs/export_scale.json

The model is built once (seeded random weights); then each component is exported into the
same bundle with ``export_bundle(..., components=[name], precisions=("fp32", "fp16"))``, the
export code path of ``svdtrt export svd-xt --random-weights --precision fp16``, while a thread
samples the process's resident memory (VmRSS, every 0.1 s). A component's "peak RSS" is the
highest sample during its export, and includes the whole PyTorch model, which this script keeps
alive (``svdtrt export`` releases each module once traced: docs/export.md gives its own peak). Agreement is measured on ONNX Runtime's CPU provider
at the validation shape (2 frames at 64x64 for SVD; see ``svdtrt.specs.validation_shape``).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import threading
import time
from pathlib import Path

from svdtrt.export.bundle_export import export_bundle
from svdtrt.models.loading import load_model
from svdtrt.specs import COMPONENTS


def rss_bytes() -> int:
    """The process's resident set size now (VmRSS of /proc/self/status), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples :func:`rss_bytes` in a thread; ``window()`` returns and resets the peak since the last call."""

    def __init__(self, period_s: float = 0.1):
        self.period_s, self._peak, self._stop = period_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.period_s):
            self._peak = max(self._peak, rss_bytes())

    def window(self) -> int:
        peak, self._peak = max(self._peak, rss_bytes()), rss_bytes()
        return peak

    def stop(self):
        self._stop.set()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="svd-xt")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create (must not exist)")
    p.add_argument("--components", default=",".join(COMPONENTS))
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    sampler = RssSampler()
    start = time.perf_counter()
    model = load_model(args.model, random_weights=True)
    build_s = time.perf_counter() - start
    rows = {"build": {"wall_s": build_s, "peak_rss_bytes": sampler.window()}}
    params = {k: sum(p.numel() for p in getattr(model, k).parameters()) for k in ("unet", "vae", "image_encoder")}
    print(f"built {args.model} in {build_s:.1f} s; parameters {params}", flush=True)
    for name in args.components.split(","):
        t0 = time.perf_counter()
        bundle = export_bundle(model, args.out, components=[name], precisions=("fp32", "fp16"), progress=False)
        wall = time.perf_counter() - t0
        entry = bundle.manifest["components"][name]
        rows[name] = {"wall_s": wall, "peak_rss_bytes": sampler.window(), "graphs": entry["graphs"],
                      "fixed_axes": entry["fixed_axes"]}
        print(f"{name}: {wall:.1f} s, peak RSS {rows[name]['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    total = time.perf_counter() - start
    sampler.stop()
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    unet_fp32 = params["unet"] * 4

    print(f"\n{args.model}: total {total / 60:.1f} min, process peak RSS {hwm / 2**30:.2f} GiB "
          f"({hwm / unet_fp32:.2f}x the UNet's fp32 weight bytes)")
    print("| component | graph | export/convert s | size MiB | cosine vs fp32 PyTorch | PSNR dB | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for name in args.components.split(","):
        r = rows[name]
        for precision, g in r["graphs"].items():
            outs = g["validation"]["outputs"].values()
            print(f"| {name} | {precision} | {g.get('export_seconds', g.get('convert_seconds')):.1f} | "
                  f"{g['bytes'] / 2**20:.1f} | {min(o['cosine'] for o in outs):.6f} | "
                  f"{min(o['psnr_db'] for o in outs):.1f} | {r['peak_rss_bytes'] / 2**30:.2f} |")
    if "unet" in rows:
        fp16 = rows["unet"]["graphs"]["fp16"]["bytes"]
        print(f"\nUNet fp16 graph + data: {fp16} bytes = {fp16 / (2 * params['unet']):.4f} x 2 bytes/parameter")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "parameters": params, "total_s": total,
                                         "peak_rss_bytes": hwm, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
