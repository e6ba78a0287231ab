"""One GPU self-check: every GPU path of svdtrt at the tiny preset's shapes, one pass/fail table.

    python benchmarks/gpu_selftest.py [--work DIR] [--keep]

For a user with a GPU, or a session lent one. It exports the tiny preset (fp32 + fp16 graphs),
records a calibration set and quantizes int8 (and fp8 where the GPU's compute capability allows
it, :mod:`svdtrt.precisions`), then runs, each as the user would from the command line:

- the torch backend on CUDA, fp32 and fp16, through ``svdtrt check``;
- ``onnxruntime-cuda`` and ``onnxruntime-trt`` through ``svdtrt check`` where onnxruntime-gpu
  loads those providers (:func:`svdtrt.graphs.sessions.provider_loads`);
- ``svdtrt build`` of TensorRT engines in fp32, fp16, int8 and fp8 with one timing cache, and
  ``svdtrt check --backend tensorrt`` on each;
- the test suite's ``gpu`` and ``tensorrt`` tests (``pytest -m "gpu or tensorrt"``).

Each row says passed, FAILED or skipped (with the reason), and its seconds; the exit code is 1
when a row failed. Nothing needs a GPU to start: on a machine without one every row is skipped
with its reason. docs/tensorrt.md ("GPU self-check") says what a session lent a GPU ran.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _svdtrt(*args) -> list[str]:
    return [sys.executable, "-m", "svdtrt", *map(str, args)]


class SelfTest:
    def __init__(self, work: Path):
        self.work, self.rows = work, []

    def run(self, name: str, command: list[str] | None, skip: str | None = None) -> bool:
        """Run ``command`` as row ``name`` (or record it skipped with ``skip``); True when it passed."""
        if skip:
            self.rows.append((name, "skipped", 0.0, skip))
            print(f"[skip] {name}: {skip}", flush=True)
            return False
        print(f"[run ] {name}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        lines = (done.stdout + done.stderr).strip().splitlines()
        detail = next((line for line in reversed(lines) if line.strip()), "")[:110]
        status = "passed" if done.returncode == 0 else f"FAILED ({done.returncode})"
        self.rows.append((name, status, seconds, detail))
        print(f"[{'ok' if done.returncode == 0 else 'FAIL':4s}] {name}: {seconds:.1f} s  {detail}", flush=True)
        return done.returncode == 0

    def table(self) -> str:
        out = ["| check | result | seconds | detail |", "|---|---|---|---|"]
        out += [f"| {n} | {s} | {t:.1f} | {d.replace('|', '/')} |" for n, s, t, d in self.rows]
        return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)

    import torch

    from svdtrt.cli.doctor import diagnose
    from svdtrt.graphs.sessions import provider_loads
    from svdtrt.precisions import precision as lookup_precision

    work = args.work or Path(tempfile.mkdtemp(prefix="svdtrt-selftest-"))
    work.mkdir(parents=True, exist_ok=True)
    report = diagnose()
    gpu = report["gpu"]
    print(f"GPU: {gpu['name'] + ', compute capability ' + gpu['compute_capability'] if gpu else 'none'}; "
          f"TensorRT {report['tensorrt'] or 'not installed'}; ONNX Runtime {report['onnxruntime']['package']}")
    no_gpu = None if torch.cuda.is_available() else f"no CUDA GPU (torch {torch.__version__} sees none)"
    test = SelfTest(work)
    bundle, image = work / "tiny", work / "photo.png"
    from svdtrt.media.images import sample_image

    sample_image("astronaut").save(image)
    check = ["--image", image, "--steps", "4"]
    ready = test.run("export tiny (fp32 + fp16 graphs)", _svdtrt("export", "tiny", "--out", bundle,
                                                                  "--precision", "fp16", "--force"))
    quantized = []
    if ready and test.run("calibrate (2 images x 2 steps)", _svdtrt("calibrate", bundle, "--count", "2",
                                                                    "--steps", "2", "--force")):
        cc = tuple(int(x) for x in gpu["compute_capability"].split(".")) if gpu else None
        for precision in ("int8", "fp8"):
            need = lookup_precision(precision).min_compute_capability
            if need and cc and cc < need:
                test.run(f"quantize {precision}", None, f"needs compute capability {need[0]}.{need[1]}, "
                                                        f"this GPU has {gpu['compute_capability']}")
            elif test.run(f"quantize {precision}", _svdtrt("quantize", bundle, "--precision", precision, "--force")):
                quantized.append(precision)
    missing = None if ready else "the export failed"

    for precision in ("fp32", "fp16"):
        test.run(f"torch cuda {precision}: check", _svdtrt("check", bundle, *check, "--backend", "torch",
                                                            "--device", "cuda", "--precision", precision),
                 skip=missing or no_gpu)
    for backend, provider in (("onnxruntime-cuda", "CUDAExecutionProvider"),
                              ("onnxruntime-trt", "TensorrtExecutionProvider")):
        problem = missing or no_gpu or provider_loads(provider)
        for precision in ("fp32", "fp16", *quantized[:1]):
            test.run(f"{backend} {precision}: check", _svdtrt("check", bundle, *check, "--backend", backend,
                                                               "--precision", precision), skip=problem)
    trt_problem = missing or (None if report["backends"]["tensorrt"] == "ready" else report["backends"]["tensorrt"])
    cache = work / "timing.cache"
    for precision in ("fp32", "fp16", *quantized):
        built = test.run(f"tensorrt {precision}: build", _svdtrt("build", bundle, "--precision", precision,
                                                                  "--timing-cache", cache), skip=trt_problem)
        test.run(f"tensorrt {precision}: check", _svdtrt("check", bundle, *check, "--backend", "tensorrt",
                                                          "--precision", precision),
                 skip=trt_problem or (None if built else "its build failed"))
    test.run("pytest -m 'gpu or tensorrt'", [sys.executable, "-m", "pytest", "-q", "-m", "gpu or tensorrt", "-rs"],
             skip=no_gpu)

    print()
    print(test.table())
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(s.startswith("FAILED") for _, s, _, _ in test.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
