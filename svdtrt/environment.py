"""What this machine offers for the GPU stages: the CUDA device (through torch) and the
optional TensorRT and Polygraphy packages, imported lazily so that the rest of svdtrt works
without them (docs/architecture.md, "Environment").

TensorRT's Python package comes from NVIDIA's index (``pypi.nvidia.com``) or, on Jetson,
with JetPack; Polygraphy is on PyPI. Both are in the ``tensorrt`` extra of ``pyproject.toml``,
with ``onnxruntime-gpu``; the ``cuda`` extra has ``onnxruntime-gpu`` alone, ``cpu`` the CPU
``onnxruntime``. Exactly one ONNX Runtime may be installed: both packages own the
``onnxruntime`` module (docs/architecture.md, "Installing").
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from pathlib import Path

from . import hints
from .errors import BackendUnavailableError

#: How to get the optional GPU packages, quoted in every "missing" message: pip commands that work
#: from where svdtrt was installed (:func:`svdtrt.hints.install_extra`); onnxruntime and
#: onnxruntime-gpu own the same module, so a GPU install replaces the CPU one.
INSTALL_HINT = f"{hints.install_extra('tensorrt', replace_onnxruntime=True)} (on Jetson, TensorRT comes with JetPack)"
#: How to get ONNX Runtime with the CUDA and TensorRT providers (onnxruntime-gpu).
ORT_GPU_HINT = hints.install_extra("cuda", replace_onnxruntime=True)
#: How to get ONNX Runtime at all.
ORT_HINT = (f"{hints.install_extra('cpu')} (or {hints.install_extra('cuda')} for onnxruntime-gpu on a CUDA machine); "
            "install one of onnxruntime and onnxruntime-gpu, never both")


#: The oldest TensorRT svdtrt runs: 10.3, JetPack 6.1's, the oldest platform it supports
#: (docs/tensorrt.md, "Which TensorRT"). Its calls need 10.1 or later:
#: ``ExecutionContextAllocationStrategy.USER_MANAGED``, strongly typed networks and
#: ``execute_async_v3`` (10.0), ``ICudaEngine.device_memory_size_v2`` and
#: ``IExecutionContext.set_device_memory(memory, size)`` (10.1; all in TensorRT 10.3's
#: ``python/src/infer/pyCore.cpp``). ``pyproject.toml`` declares the same floor (the ``tensorrt``
#: extra); JetPack's TensorRT does not come from pip, so :func:`require_tensorrt` checks it too.
TENSORRT_FLOOR = (10, 3)


def cache_dir() -> Path:
    """svdtrt's folder in the user's cache: ``$XDG_CACHE_HOME/svdtrt`` (``~/.cache/svdtrt`` when
    the variable is unset or empty, the XDG Base Directory default). It holds the sha256 cache
    (``sha256.json``) and the ONNX Runtime TensorRT provider's engines (``ort-trt/``); nothing in it
    is needed, only reused. Not created here."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "svdtrt"


def onnxruntime_package() -> str | None:
    """Which ONNX Runtime distribution provides the ``onnxruntime`` module: ``"onnxruntime-gpu"``,
    ``"onnxruntime"``, or None when neither is installed. Distribution names, not the module, are
    what ``importlib.metadata`` knows: ``version("onnxruntime")`` raises where only
    onnxruntime-gpu is installed (the GPU setup)."""
    return next((p for p in ("onnxruntime-gpu", "onnxruntime") if package_version(p)), None)


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def import_optional(module: str):
    """``module`` imported, or None when it (or a library it loads) is missing."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError):  # OSError: the wheel is there but libnvinfer is not
        return None


def tensorrt_version() -> str | None:
    """``tensorrt.__version__`` (e.g. ``"10.3.0"``), or None when TensorRT cannot be imported."""
    trt = import_optional("tensorrt")
    return getattr(trt, "__version__", None) if trt is not None else None


def cuda_device(index: int = 0) -> dict | None:
    """The CUDA GPU torch sees, or None when there is none (or torch is a CPU build).

    Returns:
        ``{"name": str, "compute_capability": "8.7", "memory_bytes": int}``; memory is the
        device's total memory in bytes (on Jetson, the unified memory shared with the CPU).
    """
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_bytes": int(props.total_memory)}


def require_tensorrt(purpose: str = "the tensorrt backend"):
    """Import and return the ``tensorrt`` module, checking Polygraphy and a CUDA GPU too.

    Args:
        purpose: what needs them, for the message (e.g. ``"svdtrt build"``).
    Raises:
        BackendUnavailableError: one line naming every missing piece and how to get it, or a
            TensorRT older than :data:`TENSORRT_FLOOR`.
    """
    import torch
    from packaging.version import InvalidVersion, Version

    trt = import_optional("tensorrt")
    packages = [name for name, ok in (("TensorRT (the 'tensorrt' Python package)", trt is not None),
                                      ("Polygraphy", import_optional("polygraphy") is not None)) if not ok]
    gpu = torch.cuda.is_available()
    if packages or not gpu:
        missing = packages + ([] if gpu else [f"a CUDA GPU (torch {torch.__version__} sees none)"])
        remedies = ([f"install with: {INSTALL_HINT}"] if packages else []) + \
            ([] if gpu else ["run on a machine with an NVIDIA GPU and a CUDA build of torch"])
        raise BackendUnavailableError(
            f"{purpose} needs {' and '.join(missing)}, which this machine lacks; {'; '.join(remedies)}; "
            "'svdtrt doctor' shows what is here")
    version = getattr(trt, "__version__", "unknown")
    try:
        old = Version(version).release[:2] < TENSORRT_FLOOR
    except InvalidVersion:
        old = True
    if old:
        raise BackendUnavailableError(
            f"{purpose} needs TensorRT {'.'.join(map(str, TENSORRT_FLOOR))} or later (JetPack 6.1 or later on a "
            f"Jetson), this machine has {version}; install a newer one with: {INSTALL_HINT}")
    return trt


def quiet_polygraphy() -> None:
    """Keep Polygraphy's own stdout logger to warnings unless svdtrt logs at INFO (``-v``)."""
    import logging

    logger = import_optional("polygraphy.logger")
    if logger is not None and not logging.getLogger("svdtrt").isEnabledFor(logging.INFO):
        logger.G_LOGGER.module_severity = logger.G_LOGGER.WARNING


#: The packages that shape a bundle (recorded in its manifest and in benchmark results).
TOOLS = ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "onnxslim")


def tool_versions() -> dict[str, str | None]:
    """Installed versions of :data:`TOOLS`, plus Python's and svdtrt's."""
    import platform

    from . import __version__

    versions = {name: package_version(name) for name in TOOLS}
    ort = onnxruntime_package()
    versions["onnxruntime"] = package_version(ort) if ort else None  # the module's version, either package
    return {"python": platform.python_version(), "svdtrt": __version__, **versions}
