"""What a benchmark row measures besides time: peak memory, order statistics, the machine.

Peak host memory is the process's resident-set high-water mark (``VmHWM`` in
``/proc/self/status``), reset at the start of each row by writing ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0, ``man 5 proc``); where that is not possible the
figure is ``getrusage``'s ``ru_maxrss``, the peak since the process started, and the
result says so. Peak GPU memory is ``torch.cuda.max_memory_allocated``: what PyTorch's
allocator handed out, not memory other libraries (ONNX Runtime, TensorRT) take directly.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np
import torch

from .results import Memory, OrderStats

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


def machine_info() -> dict:
    """The machine a benchmark ran on: OS, CPU, cores usable, memory, GPUs, load average."""
    info = {
        "platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _total_memory(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "load_average": load_average(),
    }
    return info


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
