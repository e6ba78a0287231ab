"""What a measurement of the runtime records besides a clip's stage times (:class:`~svdtrt.runtime.pipeline.StageTimer`):
peak memory, order statistics of repeated timings, and the machine they were taken on. Shared by
``svdtrt bench`` (:mod:`svdtrt.benchmark`) and ``svdtrt tune`` (:mod:`svdtrt.tune`).

Peak host memory is the process's resident-set high-water mark (``VmHWM`` in
``/proc/self/status``), reset at the start of each measurement (a bench row, a tune candidate) by writing ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0, ``man 5 proc``); where that is not possible the
figure is ``getrusage``'s ``ru_maxrss``, the peak since the process started, and the
result says so. Peak GPU memory is ``torch.cuda.max_memory_allocated``: what PyTorch's
allocator handed out, not memory other libraries (ONNX Runtime, TensorRT) take directly.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError


@dataclass(frozen=True)
class OrderStats:
    """Median and 90th percentile, min, max and count of repeated measurements (seconds, for
    stage times; :func:`order_stats`)."""

    median: float
    p90: float
    min: float
    max: float
    n: int


@dataclass(frozen=True)
class Memory:
    """Peak memory over a measurement (:class:`PeakMemory`), bytes.

    Attributes:
        host_method: ``"VmHWM"`` (peak since the measurement began) or ``"ru_maxrss"`` (peak
            since the process started: an upper bound).
        peak_gpu_bytes: ``torch.cuda.max_memory_allocated``; None without CUDA.
    """

    peak_rss_bytes: int | None
    rss_start_bytes: int | None
    host_method: str
    peak_gpu_bytes: int | None


@dataclass
class Machine:
    """The machine measurements were taken on (:func:`machine_info`).

    Attributes:
        cpu: the CPU's model name; cpu_count, cpus_usable: its logical cores, and those this
            process may run on (its affinity); torch_threads: PyTorch's intra-op threads.
        memory_bytes: physical memory, or None where unknown.
        gpus: the CUDA devices' names (empty without CUDA).
        load_average: 1, 5 and 15-minute load averages when the measurement began (runnable
            processes: more than the usable cores means others shared the CPU); None where unknown.
        load_average_end: the same when it ended (set by the caller).
    """

    platform: str
    machine: str
    cpu: str
    cpu_count: int | None
    cpus_usable: int | None
    torch_threads: int
    memory_bytes: int | None
    gpus: list[str] = field(default_factory=list)
    load_average: list[float] | None = None
    load_average_end: list[float] | None = None

    def summary(self) -> str:
        """One line: CPU, cores, memory, GPUs and the load averages, for reports."""
        memory = "?" if self.memory_bytes is None else f"{self.memory_bytes / 2**20:.0f}"
        return (f"{self.cpu}, {self.cpus_usable} usable cores, {memory} MiB RAM, GPUs: {', '.join(self.gpus) or 'none'}; "
                f"load average {self.load_average} at start, {self.load_average_end} at end")


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak host RSS and peak PyTorch CUDA memory between :meth:`reset` and :meth:`read`.

    Attributes:
        host_method: ``"VmHWM"`` (peak since the last reset) or ``"ru_maxrss"`` (peak since the
            process started: an upper bound, used where the high-water mark cannot be reset).
    """

    def __init__(self):
        self.host_method = "VmHWM"
        self.rss_start_bytes: int | None = None

    def reset(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.host_method = "ru_maxrss"
        if _status_bytes("VmHWM") is None:
            self.host_method = "ru_maxrss"
        self.rss_start_bytes = _status_bytes("VmRSS")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def read(self) -> Memory:
        """The peaks since :meth:`reset`; ``peak_gpu_bytes`` is None without CUDA."""
        if self.host_method == "VmHWM":
            peak = _status_bytes("VmHWM")
        else:  # ru_maxrss is in kB on Linux and in bytes on macOS
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        gpu = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
        return Memory(peak_rss_bytes=peak, rss_start_bytes=self.rss_start_bytes, host_method=self.host_method,
                      peak_gpu_bytes=gpu)


def order_stats(values: list[float]) -> OrderStats:
    """Median and 90th percentile (numpy's linear interpolation) of ``values``, plus min, max, n."""
    a = np.asarray(values, dtype=np.float64)
    return OrderStats(median=float(np.median(a)), p90=float(np.percentile(a, 90)), min=float(a.min()),
                      max=float(a.max()), n=int(a.size))


def machine_info() -> Machine:
    """This machine now: OS, CPU, cores usable, memory, GPUs, load average."""
    return Machine(
        platform=platform.platform(), machine=platform.machine(), cpu=_cpu_name(), cpu_count=os.cpu_count(),
        cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        torch_threads=torch.get_num_threads(), memory_bytes=_total_memory(),
        gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        load_average=load_average())


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's CPU threads (``torch.set_num_threads``, process-wide) set to ``threads`` for the
    block and restored after; None leaves them as they are.

    Raises:
        InputError: ``threads`` below 1 (``--threads``).
    """
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (runnable processes); shows whether others shared the CPU."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
