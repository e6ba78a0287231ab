"""Fixtures of the serving tests: one local Ray per test module (2 CPUs, no dashboard: the
lightest Ray that starts in a few seconds), and the processes Ray runs, found by their titles."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the module (as ``svdtrt serve`` and ``batch`` start one), shut down after it."""
    ray = pytest.importorskip("ray", reason="needs Ray: pip install 'svdtrt[serve]'")
    # "local": a new Ray even where a "ray start" cluster runs here; without the workers' logs, which
    # would mix into the CLI output the tests read
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
             logging_level="WARNING", log_to_driver=False)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


def processes(title: str) -> list[int]:
    """PIDs of the processes whose command line (Ray's process title, e.g.
    ``ray::ClipWorker.make`` while a worker makes a clip) contains ``title``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title in cmdline:
                pids.append(int(entry.name))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busiest(pids: list[int], window: float = 0.5) -> int:
    """The one of ``pids`` that used the most CPU over ``window`` seconds (the one computing)."""
    before = {p: cpu_seconds(p) for p in pids}
    time.sleep(window)
    return max(pids, key=lambda p: cpu_seconds(p) - before[p])


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
