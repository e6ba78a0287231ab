"""What a user sees while svdtrt works (docs/architecture.md, "Progress and verbosity"): tqdm bars
on stderr, kept ticking through calls that report nothing of their own, a status line for a step
that is one such call, and each step's wall time logged at INFO (what ``-v`` shows).

tqdm redraws a bar only when it is updated, so a bar whose step is one long call (an import,
building a model, ``torch.onnx.export``, ONNX Runtime's quantizer, Ray's start) would freeze for
that call's whole length; :func:`ticking` redraws it from a timer thread instead, so its clock
runs. A thread needs nothing from the main thread, which is inside the long call; C++ code that
holds the GIL delays a tick until it lets go (``benchmarks/silences.py`` measures the longest
silence of every command).

Ticking and status lines are for a terminal: where stderr is a file or a pipe, bars are drawn as
tqdm draws them (on updates) and status lines are not shown, as pip shows its spinner on a
terminal only; ``-v``'s log lines name the steps there. tqdm is imported when a bar is made, so
importing this module costs nothing (``svdtrt --help``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: Seconds between redraws of a ticking bar: well within the ~3 s a silent terminal is allowed.
TICK_SECONDS = 0.5


def on_terminal(stream=None) -> bool:
    """Whether ``stream`` (default stderr, where tqdm draws) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


@contextlib.contextmanager
def ticking(bar, seconds: float = TICK_SECONDS) -> Iterator:
    """Redraw ``bar`` (a tqdm bar) every ``seconds`` while the block runs, so that its elapsed time
    and postfix stay current through calls that never update it; nothing off a terminal or for a
    disabled bar. Yields ``bar``."""
    if bar.disable or not on_terminal(bar.fp):
        yield bar
        return
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(seconds):
            bar.refresh()  # takes the bar's lock: safe beside the main thread's own updates

    thread = threading.Thread(target=tick, name="svdtrt-progress", daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def status(label: str, enabled: bool = True, logger: logging.Logger = log) -> Iterator:
    """A status line ``label (00:03)`` on a terminal's stderr, its clock ticking while the block
    runs and the line cleared after, for a step that is one call with nothing to count; then
    ``label took N.N s`` logged at INFO on ``logger``. ``enabled`` False (or stderr not a
    terminal) shows nothing; the log line stays. Yields the tqdm bar, whose postfix may name what
    the step is at."""
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(total=None, desc=label, bar_format="{desc} ({elapsed}){postfix}", leave=False,
              disable=not (enabled and on_terminal())) as bar, ticking(bar):
        yield bar
    logger.info("%s took %.1f s", label, time.perf_counter() - start)


def loading(command: str, what: str, logger: logging.Logger = log):
    """A command's first line, ``svdtrt COMMAND: loading WHAT``, shown while it imports the
    libraries it needs (seconds of imports: torch, diffusers, ONNX Runtime); a :func:`status`."""
    return status(f"svdtrt {command}: loading {what}", logger=logger)


class Steps:
    """Steps run one after another, each named on ``bar``'s postfix while it runs (the bar should
    be :func:`ticking`) and logged as ``[PREFIX: ]step took N.N s`` at INFO on ``logger`` when the
    next starts or at :meth:`close`. Calling it starts a step, so it can be handed to a call that
    reports its own stages (:func:`svdtrt.graphs.qdq.quantize_graph`'s ``stage``)."""

    def __init__(self, bar, logger: logging.Logger = log, prefix: str | None = None):
        self.bar, self.logger, self.prefix = bar, logger, prefix
        self.current: str | None = None
        self.start = 0.0

    def __call__(self, what: str) -> None:
        self.close()
        self.current, self.start = what, time.perf_counter()
        self.bar.set_postfix_str(what)

    def close(self) -> None:
        """End the step in hand (log its time) and clear the postfix."""
        if self.current is not None:
            label = f"{self.prefix}: {self.current}" if self.prefix else self.current
            self.logger.info("%s took %.1f s", label, time.perf_counter() - self.start)
            self.current = None
            self.bar.set_postfix_str("")


@contextlib.contextmanager
def step(bar, what: str, logger: logging.Logger = log) -> Iterator[None]:
    """One of :class:`Steps` for the block: ``what`` named on ``bar`` while the block runs and
    logged with its wall time when it ends."""
    steps = Steps(bar, logger)
    steps(what)
    yield
    steps.close()
