"""Peak resident memory of each step of an export, on the code path of ``svdtrt export MODEL
--random-weights --precision fp16`` (docs/export.md, "Memory"): to find which step sets the
process's peak, on a small preset in seconds, before confirming on svd-xt with ``/usr/bin/time -v``.

    PYTHONPATH=$PWD python benchmarks/export_memory.py small --out /tmp/small.bundle [--precision fp32]

The export logs each step as it ends at INFO (what ``-v`` shows, docs/architecture.md "Progress
and verbosity"); at every such record this reads the kernel's exact high-water mark of the
process's resident memory since the previous record (``VmHWM`` of ``/proc/self/status``, reset by
writing 5 to ``/proc/self/clear_refs``), so a step's peak is measured whatever the step runs
(C++ code included, which a sampling thread can miss). The ratio is to the UNet's fp32 weight bytes
(4 bytes per parameter), the yardstick of docs/export.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS (proc(5), clear_refs)


class PeakPerRecord(logging.Handler):
    """At each log record: the peak RSS since the previous one, and the RSS left after it."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.rows: list[tuple[float, str, int, int]] = []
        self.start = time.perf_counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.rows.append((time.perf_counter() - self.start, record.getMessage()[:110], _status("VmHWM"),
                          _status("VmRSS")))
        _reset_peak()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a preset: tiny, small, mid, svd, svd-xt")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to create (replaced)")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16"))
    args = p.parse_args(argv)

    from svdtrt.export.bundle_export import export_bundle
    from svdtrt.models.loading import load_model

    handler = PeakPerRecord()
    logger = logging.getLogger("svdtrt")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    _reset_peak()
    model = load_model(args.model, random_weights=True, progress=False)
    unet_bytes = 4 * sum(p.numel() for p in model.unet.parameters())
    precisions = ("fp32", "fp16") if args.precision == "fp16" else ("fp32",)
    export_bundle(model, args.out, precisions=precisions, force=True, progress=False, release_weights=True)
    logger.removeHandler(handler)

    print(f"{args.model}: UNet fp32 weights {unet_bytes / 1e9:.3f} GB; peak RSS (GB, x UNet weights) per step, "
          "RSS after it:")
    for t, message, peak, rss in handler.rows:
        print(f"  {t:7.1f} s  peak {peak / 1e9:6.2f} GB {peak / unet_bytes:5.2f}x  after {rss / 1e9:6.2f} GB  "
              f"{message}")
    # ru_maxrss is the same high-water mark, reset with it: the process's peak is the rows' highest
    peak = max([row[2] for row in handler.rows] + [_status("VmHWM")])
    print(f"process peak RSS: {peak / 1e9:.2f} GB = {peak / unet_bytes:.2f}x the UNet's fp32 weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
