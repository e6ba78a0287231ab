"""What a user sees while svdtrt works (svdtrt/progress.py): a bar keeps ticking through a call that
never updates it, a status line names its step and is cleared after it, nothing is drawn off a
terminal, and every step's wall time is logged at INFO; and on a terminal, ``svdtrt run``'s first
line names what it loads before its imports."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

from tqdm import tqdm

from svdtrt import progress


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, and tells when the ``n``-th write has come."""

    def __init__(self, n: int = 0):
        super().__init__()
        self.writes, self.n, self.reached = 0, n, threading.Event()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes >= self.n:
            self.reached.set()
        return super().write(text)


def test_a_ticking_bar_is_redrawn_while_the_main_thread_is_inside_one_call():
    terminal = Terminal(n=5)
    bar = tqdm(total=3, desc="export", file=terminal)
    with progress.ticking(bar, seconds=0.01):
        bar.set_postfix_str("unet: ONNX export")
        # the "long call": the main thread waits and updates nothing; only the timer thread draws
        assert terminal.reached.wait(timeout=30)
    bar.close()
    assert terminal.getvalue().count("unet: ONNX export") >= 3


def test_nothing_ticks_off_a_terminal():
    stream = io.StringIO()
    bar = tqdm(total=3, desc="export", file=stream)
    with progress.ticking(bar, seconds=0.01):
        drawn = stream.getvalue()
        threading.Event().wait(0.1)
        assert stream.getvalue() == drawn
    bar.close()


def test_a_status_line_names_its_step_is_cleared_and_logs_its_time(monkeypatch, caplog):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    caplog.set_level(logging.INFO, logger="svdtrt")
    with progress.status("svdtrt run: loading PyTorch"):
        shown = terminal.getvalue()
    assert "svdtrt run: loading PyTorch (00:00)" in shown
    assert terminal.getvalue().endswith("\r")  # the line was blanked again: nothing of it is left
    assert [r.getMessage().startswith("svdtrt run: loading PyTorch took ") for r in caplog.records] == [True]


def test_a_status_line_is_not_shown_off_a_terminal_but_still_logged(capsys, caplog):
    caplog.set_level(logging.INFO, logger="svdtrt")
    with progress.status("starting a local Ray"):
        pass
    assert capsys.readouterr().err == ""
    assert caplog.records[0].getMessage().startswith("starting a local Ray took ")


def test_steps_name_each_stage_on_the_bar_and_log_each_one(caplog):
    caplog.set_level(logging.INFO, logger="svdtrt")
    stream = io.StringIO()
    bar = tqdm(total=1, desc="quantize int8 1/4 unet: calibrating", file=stream, mininterval=0)
    steps = progress.Steps(bar, prefix="quantize int8 1/4 unet")
    steps("weight scales and Q/DQ nodes")
    steps("fp16 base")
    steps.close()
    bar.close()
    assert "weight scales and Q/DQ nodes" in stream.getvalue() and "fp16 base" in stream.getvalue()
    assert [r.getMessage().split(" took ")[0] for r in caplog.records] == [
        "quantize int8 1/4 unet: weight scales and Q/DQ nodes", "quantize int8 1/4 unet: fp16 base"]


def test_run_names_what_it_loads_first_on_a_terminal(tiny_bundle, tmp_path):
    """The first bytes on a terminal are the loading line, which is then cleared: the error that
    follows (a missing image, found after the imports) is the only line left."""
    leader, follower = pty.openpty()
    # a terminal's size: a new pseudo-terminal is 0x0, where tqdm draws nothing
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    done = subprocess.run([sys.executable, "-m", "svdtrt", "run", str(tiny_bundle.path), "--image",
                           str(tmp_path / "missing.png"), "--out", str(tmp_path / "c.mp4")],
                          stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, timeout=300, check=False)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # every writer has closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    text = out.decode()
    assert done.returncode == 2
    assert text.startswith("\rsvdtrt run: loading PyTorch, diffusers and ONNX Runtime (00:0")
    assert text.replace("\r\n", "\n").rsplit("\r", 1)[-1].startswith("svdtrt: error: image ")


def test_checks_diffusers_reference_ticks_through_each_step_and_the_decode(tiny_model, photo, monkeypatch):
    """``check``'s diffusers reference stage: diffusers' own bar froze through the decode (26 s on
    mid); the bar that replaces it is redrawn while the decode runs, and the frames are diffusers'."""
    import numpy as np
    from diffusers import StableVideoDiffusionPipeline

    from svdtrt.check.compare import _diffusers_clip
    from svdtrt.runtime.pipeline import SamplingSettings

    settings = SamplingSettings(frames=4, height=64, width=64, steps=3, seed=5)
    plain = _diffusers_clip(tiny_model, photo, settings, False)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    decode, redrawn = StableVideoDiffusionPipeline.decode_latents, threading.Event()

    def slow_decode(self, *args, **kwargs):
        # the "long decode": it waits until the timer thread has drawn the bar three times more
        drawn = terminal.getvalue().count("decoding")
        for _ in range(300):
            if terminal.getvalue().count("decoding") >= drawn + 3:
                redrawn.set()
                break
            threading.Event().wait(0.1)
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(StableVideoDiffusionPipeline, "decode_latents", slow_decode)
    frames = _diffusers_clip(tiny_model, photo, settings, "check 2/4: diffusers reference")
    assert redrawn.is_set()
    assert "check 2/4: diffusers reference" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert np.array_equal(frames, plain)
