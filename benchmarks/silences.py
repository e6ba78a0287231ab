"""How long each command of the README's Usage section leaves the terminal silent
(docs/architecture.md, "Progress and verbosity": a word within a second, no silence over ~3 s).

Each command runs as a subprocess on a pseudo-terminal, as in a user's terminal (stdout
line-buffered, tqdm drawing its bars on stderr), and every chunk of output it writes is
timestamped. Per command: seconds to the first byte, the longest gap between bytes (and what
the terminal showed last before it), that gap apart from the last one (the interpreter's exit
after the last line: its libraries' teardown), the wall time and the exit code. The commands run in the
README's order on a bundle the first one exports, so each finds what the ones before it made;
commands that need TensorRT or a GPU are listed as not run.

    PYTHONPATH=$PWD python benchmarks/silences.py mid --work /tmp/silences [--only run verify] \
        [--bundle /tmp/mid.bundle] [--json silences.json]

``--bundle`` skips the export and works on a copy of that bundle; ``--only`` runs the named
commands only (each row's name, as the table prints it).
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

#: A silence longer than this misses the target (docs/architecture.md, "Progress and verbosity").
TARGET_SILENCE_S = 3.0
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def commands(model: str, work: Path, image: Path) -> list[tuple[str, list[str] | None, str]]:
    """(name, svdtrt arguments or None when not run here, note) in the README's order. Counts and
    steps are cut where the README leaves them open, so the whole list runs in minutes on ``mid``."""
    b = str(work / "bundle")
    return [
        ("export", ["export", model, "--out", b], ""),
        ("run", ["run", b, "--image", str(image), "--out", str(work / "clip.mp4"), "--seed", "42", "--steps", "8"],
         "8 steps"),
        ("run -v", ["run", b, "--image", str(image), "--out", str(work / "clip-v.mp4"), "--steps", "8", "-v"],
         "8 steps"),
        ("convert", ["convert", b, "--precision", "fp16"], ""),
        ("verify", ["verify", b], ""),
        ("check", ["check", b, "--image", str(image), "--report", str(work / "report.json"), "--steps", "8"],
         "8 steps"),
        ("calibrate", ["calibrate", b, "--count", "2", "--steps", "4"], "2 images, 4 steps"),
        ("quantize", ["quantize", b, "--precision", "int8"], ""),
        ("check int8", ["check", b, "--image", str(image), "--precision", "int8", "--steps", "8"], "8 steps"),
        ("build --dry-run", ["build", b, "--precision", "fp16", "--profile", "static", "--dry-run"], ""),
        ("build", None, "needs TensorRT and an NVIDIA GPU"),
        ("doctor", ["doctor"], ""),
        ("bench", ["bench", b, "--backends", "torch,onnxruntime,tensorrt", "--precisions", "fp32,fp16,int8",
                   "--out", str(work / "bench"), "--warmup", "0", "--repeat", "1", "--steps", "4"],
         "warmup 0, repeat 1, 4 steps; tensorrt rows skipped (no TensorRT)"),
        ("batch", ["batch", b, "--images", str(work / "images"), "--out", str(work / "clips"), "--steps", "4"],
         "1 image, 4 steps"),
        ("batch (nothing to do)", ["batch", b, "--images", str(work / "images"), "--out", str(work / "clips"),
                                   "--steps", "4"], "the same again"),
        ("serve", ["serve", b, "--port", "8765"], "until it serves, then Ctrl-C"),
    ]


def measure(argv: list[str], until: bytes | None = None, timeout: float = 3600) -> dict:
    """Run ``argv`` on a pseudo-terminal; the times of its output. ``until``: send SIGINT once the
    output holds these bytes (for ``serve``, which runs until stopped)."""
    leader, follower = pty.openpty()
    # a terminal's size (a new pseudo-terminal has 0x0, where tqdm draws nothing)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    start = time.perf_counter()
    # SIGINT as a terminal's user has it: a shell's background job starts with it ignored, and
    # Python then installs no KeyboardInterrupt handler, so ``serve`` would never stop
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, close_fds=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(follower)
    stamps, output, interrupted = [], b"", False
    while True:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            stamps.append((time.perf_counter() - start, len(output)))
            output += chunk
            if until and not interrupted and until in output:
                proc.send_signal(signal.SIGINT)
                interrupted = True
        if time.perf_counter() - start > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    code = proc.wait()
    end = time.perf_counter() - start
    os.close(leader)
    times = [0.0] + [t for t, _ in stamps] + [end]
    gaps = [(b - a, i) for i, (a, b) in enumerate(itertools.pairwise(times))]
    longest, at = max(gaps)
    # the gap after chunk k (gap k + 1) shows what the terminal held at the end of chunk k
    before = output[:stamps[at][1] if at < len(stamps) else len(output)] if at else b""
    shown = [line.strip() for line in _ANSI.sub(b"", before).replace(b"\r", b"\n").decode(errors="replace").splitlines()]
    shown = [line for line in shown if line]
    # the last gap is the interpreter's exit after the command's last line (its libraries' teardown):
    # reported apart, as the longest silence while the command still had work to show
    working = max(gaps[:-1], default=(0.0, 0))[0]
    return {"first_output_s": round(stamps[0][0], 3) if stamps else None, "longest_silence_s": round(longest, 2),
            "longest_silence_before_last_output_s": round(working, 2), "exit_after_last_output_s": round(gaps[-1][0], 2),
            "silence_after": shown[-1][-120:] if shown else "(start)", "seconds": round(end, 1), "exit_code": code,
            "output_tail": _ANSI.sub(b"", output[-2000:]).decode(errors="replace")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="preset to export, e.g. mid")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (replaced)")
    parser.add_argument("--bundle", type=Path, help="use a copy of this bundle instead of exporting one")
    parser.add_argument("--only", nargs="+", help="run only these rows")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    (args.work / "images").mkdir(parents=True)
    from svdtrt.media.images import sample_image

    image = args.work / "images" / "astronaut.png"
    sample_image("astronaut").save(image)
    if args.bundle:
        shutil.copytree(args.bundle, args.work / "bundle")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    rows = []
    for name, argv, note in commands(args.model, args.work, image):
        if (args.only and name not in args.only) or (args.bundle and name == "export"):
            continue
        if argv is None:
            rows.append({"command": name, "note": note, "run": False})
            print(f"{name:24s} not run: {note}", flush=True)
            continue
        until = b"Ctrl-C stops" if name == "serve" else None
        row = {"command": name, "argv": ["svdtrt", *argv], "note": note, "run": True,
               **measure([sys.executable, "-m", "svdtrt", *argv], until)}
        rows.append(row)
        mark = "" if row["longest_silence_s"] <= TARGET_SILENCE_S else "  OVER"
        print(f"{name:24s} first output {row['first_output_s']}s, longest silence {row['longest_silence_s']:6.2f} s"
              f"{mark} (after: {row['silence_after']!r}; before the last output "
              f"{row['longest_silence_before_last_output_s']} s, exit {row['exit_after_last_output_s']} s after it), "
              f"{row['seconds']} s, exit code {row['exit_code']}", flush=True)
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
