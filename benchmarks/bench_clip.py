"""Per-stage and per-clip latency, memory and accuracy of a bundle's backends and precisions,
against diffusers' own pipeline: the same as ``svdtrt bench`` (see ``docs/benchmarks.md``).

    python benchmarks/bench_clip.py BUNDLE [--backends ...] [--precisions ...] [--steps N] [--out DIR]
"""

import sys

from svdtrt.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
