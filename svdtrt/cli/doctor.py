"""``svdtrt doctor``: what this machine offers svdtrt, and which backends it can run."""

from __future__ import annotations

import logging
import platform

from ..environment import (
    INSTALL_HINT,
    ORT_GPU_HINT,
    ORT_HINT,
    cuda_device,
    import_optional,
    onnxruntime_package,
    package_version,
    tensorrt_version,
)
from ..progress import status

log = logging.getLogger(__name__)


def diagnose() -> dict:
    """Versions and devices, as JSON-serialisable data; nothing here raises for a missing piece.

    Returns:
        ``{"python", "platform", "svdtrt", "torch": {"version", "cuda"}, "gpu": {"name",
        "compute_capability", "memory_bytes"} | None, "tensorrt", "polygraphy", "onnxruntime":
        {"version", "package", "providers"}, "backends": {name: "ready" | reason}}``; a
        missing package's version is None.
    """
    import torch

    from .. import __version__

    ort = import_optional("onnxruntime")
    providers = list(ort.get_available_providers()) if ort is not None else []
    ort_package = onnxruntime_package()
    both = package_version("onnxruntime") and package_version("onnxruntime-gpu")
    gpu = cuda_device()
    trt = tensorrt_version()
    polygraphy = package_version("polygraphy")
    report = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "svdtrt": __version__,
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda},
        "gpu": gpu,
        "tensorrt": trt,
        "polygraphy": polygraphy,
        "onnxruntime": {"version": getattr(ort, "__version__", None), "package": ort_package,
                        "providers": providers},
    }
    if both:
        report["onnxruntime"]["warning"] = ("both onnxruntime and onnxruntime-gpu are installed; they own the same "
                                            "module and the last installed wins: pip uninstall -y onnxruntime "
                                            "onnxruntime-gpu, then install one")
    needs_trt = [what for what, ok in (("TensorRT", trt), ("Polygraphy", polygraphy), ("a CUDA GPU", gpu)) if not ok]
    report["backends"] = {
        "torch": "ready (cpu" + (", cuda)" if gpu else ")"),
        "onnxruntime": _ort_backend(ort, "CPUExecutionProvider", ORT_HINT),
        "onnxruntime-cuda": _ort_backend(ort, "CUDAExecutionProvider", ORT_GPU_HINT),
        "onnxruntime-trt": _ort_backend(ort, "TensorrtExecutionProvider", INSTALL_HINT),
        "tensorrt": "ready" if not needs_trt else "needs " + ", ".join(needs_trt),
    }
    return report


def _ort_backend(ort, provider: str, hint: str) -> str:
    """'ready' when a session on ``provider`` loads here (not merely compiled in), else why not."""
    if ort is None:
        return f"needs ONNX Runtime: {ORT_HINT}"
    from ..graphs.sessions import provider_loads

    problem = provider_loads(provider)
    return "ready" if problem is None else f"{problem}; {hint}"


def format_report(report: dict) -> list[str]:
    """The doctor's report as aligned text lines."""
    gpu = report["gpu"]
    ort = report["onnxruntime"]
    lines = [
        ("python", f"{report['python']} ({report['platform']})"),
        ("svdtrt", report["svdtrt"]),
        ("torch", f"{report['torch']['version']}, CUDA {report['torch']['cuda'] or 'none (CPU build)'}"),
        ("GPU", f"{gpu['name']}, compute capability {gpu['compute_capability']}, "
                f"{gpu['memory_bytes'] / 2**30:.1f} GiB" if gpu else "none"),
        ("TensorRT", report["tensorrt"] or "not installed"),
        ("Polygraphy", report["polygraphy"] or "not installed"),
        ("ONNX Runtime", f"{ort['version']} ({ort['package']}), providers: {', '.join(ort['providers']) or 'none'}"
                         if ort["version"] else "not installed"),
    ]
    out = [f"{k:13s} {v}" for k, v in lines]
    if ort.get("warning"):
        out.append(f"{'':13s} warning: {ort['warning']}")
    out.append("backends:")
    out += [f"  {k:17s} {v}" for k, v in report["backends"].items()]
    return out


def doctor(args) -> int:
    """``svdtrt doctor [BUNDLE]``: :func:`format_report` of :func:`diagnose`, and how to get TensorRT
    where it is missing; with a bundle, the memory a clip with the given options needs (device
    memory on a GPU backend, held to ``--device-memory``; host memory otherwise). Exit code 0.

    Raises:
        InputError: the clip's settings are invalid, or its device-memory estimate exceeds
            ``--device-memory`` (or this GPU's free memory).
    """
    with status("svdtrt doctor: probing PyTorch, ONNX Runtime and TensorRT", logger=log):
        report = diagnose()
    print("\n".join(format_report(report)))
    missing = [name for name, key in (("TensorRT", "tensorrt"), ("Polygraphy", "polygraphy")) if not report[key]]
    if missing:  # a missing GPU is not something pip installs: the backends' lines say so
        print(f"to get {' and '.join(missing)}: {INSTALL_HINT}")
    if args.bundle:
        _clip_memory(args)
    return 0


def _clip_memory(args) -> None:
    """Print the memory one clip of ``args.bundle`` needs with the sampling and backend options."""
    from ..bundle.store import Bundle
    from ..runtime.backends import on_gpu
    from ..runtime.memory import estimate_host_memory
    from .args import BACKEND, DEVICE_MEMORY, SAMPLING, WORK

    bundle = Bundle.open(args.bundle)
    choice = BACKEND.parse(args)
    settings = SAMPLING.parse(args, bundle, WORK.parse(args))
    print(f"clip: {settings.frames} frames of {settings.width}x{settings.height}, {settings.steps} steps, on "
          f"{choice.backend} ({choice.precision})")
    if not on_gpu(choice.backend, choice.device):
        host = estimate_host_memory(bundle, settings, choice.backend, choice.precision, choice.device)
        print(f"host memory: at least {host.describe()}")
    DEVICE_MEMORY.check(args, bundle, settings, choice)
