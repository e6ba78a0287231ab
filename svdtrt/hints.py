"""Every command line svdtrt suggests in a message, built in one place from the data the
commands themselves use: the bundle's path as the user gave it, the manifest's ``source.name``
for ``MODEL``, the precision registry (:mod:`svdtrt.precisions`) for how a precision is made,
and the component specs for what a bundle should hold.

A hint is a command that works when pasted into a POSIX shell as it is printed: every word is
quoted with :func:`shlex.join`, no placeholder (``MODEL``, ``BUNDLE``) appears in one, and a
hint that needs several steps chains them with ``&&`` rather than suggesting one step at a time
(so a user is not sent round a loop, one component per run).
"""

from __future__ import annotations

import itertools
import os
import shlex
from pathlib import Path

from .precisions import PRECISIONS
from .specs import COMPONENTS, SVD_COMPONENTS

#: The preset a hint suggests when there is no bundle yet, so no source model to name.
EXAMPLE_MODEL = "tiny"

#: The optional-dependency group of ``pyproject.toml`` that holds TensorRT, Polygraphy and
#: onnxruntime-gpu (docs/architecture.md, "Installing": cpu, cuda, tensorrt, test).
GPU_EXTRA = "tensorrt"

#: NVIDIA's package index: TensorRT's libraries are published there, its PyPI wheel redirects to it
#: (docs/tensorrt.md).
NVIDIA_INDEX = "https://pypi.nvidia.com"


def svdtrt(*words) -> str:
    """``svdtrt WORD ...`` quoted for a POSIX shell (paths with spaces stay one word)."""
    return shlex.join(["svdtrt", *(str(w) for w in words)])


def chain(*commands: str) -> str:
    """Commands to run one after the other, each only if the previous one succeeded."""
    return " && ".join(c for c in commands if c)


def export(source: str, bundle: str | os.PathLike, components: list[str] | None = None,
           precision: str | None = None, force: bool = False) -> str:
    """``svdtrt export SOURCE --out BUNDLE [--components A,B] [--precision P] [--force]``."""
    words = ["export", source, "--out", bundle]
    if components:
        words += ["--components", ",".join(components)]
    if precision and precision != "fp32":
        words += ["--precision", precision]
    return svdtrt(*words, *(["--force"] if force else []))


def fresh_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """A path beside ``path`` where nothing is yet, for a hint that must not write over what is
    there: ``path`` with its suffix replaced by ``suffix`` (``catcopy.png`` -> ``catcopy.bundle``;
    its own suffix when ``suffix`` is empty), then ``-2``, ``-3``, ... before the suffix until the
    name is free. The folder is kept as the user typed it."""
    path = Path(path)
    if path.name in ("", ".", ".."):  # '.' has no name of its own
        path = Path(os.path.abspath(path))
    stem = path.name.removesuffix(path.suffix) if path.suffix else path.name
    ext = suffix or path.suffix
    candidates = (path.with_name(f"{stem}{f'-{i}' if i > 1 else ''}{ext}") for i in itertools.count(1))
    return next(c for c in candidates if not os.path.lexists(c))


def first_export(bundle: str | os.PathLike) -> str:
    """The command that creates a bundle where there is none (the demo preset as ``MODEL``)."""
    return export(EXAMPLE_MODEL, bundle)


def convert(bundle: str | os.PathLike, precision: str = "fp16", components: list[str] | None = None,
            force: bool = False) -> str:
    """``svdtrt convert BUNDLE --precision P [--components A,B] [--force]``."""
    words = ["convert", bundle, "--precision", precision]
    if components:
        words += ["--components", ",".join(components)]
    return svdtrt(*words, *(["--force"] if force else []))


def calibrate(bundle: str | os.PathLike, name: str = "default", force: bool = False, count: int | None = None,
              steps: int | None = None, seed: int | None = None) -> str:
    """``svdtrt calibrate BUNDLE [--name N] [--count C --steps S --seed X] [--force]``."""
    words = ["calibrate", bundle] + ([] if name == "default" else ["--name", name])
    for option, value in (("--count", count), ("--steps", steps), ("--seed", seed)):
        words += [] if value is None else [option, value]
    return svdtrt(*words, *(["--force"] if force else []))


def quantize(bundle: str | os.PathLike, precision: str, calibration: str = "default", force: bool = False,
             exclude: list[str] | None = None, quantize_bias: bool = False) -> str:
    """``svdtrt quantize BUNDLE --precision P [--calibration N] [--exclude PATTERN ...]
    [--quantize-bias] [--force]``; ``exclude`` None is the default recipe, ``[]`` excludes nothing."""
    words = ["quantize", bundle, "--precision", precision]
    words += [] if calibration == "default" else ["--calibration", calibration]
    if exclude is not None:
        words += ["--exclude", *(exclude or [""])]
    return svdtrt(*words, *(["--quantize-bias"] if quantize_bias else []), *(["--force"] if force else []))


def verify(bundle: str | os.PathLike) -> str:
    return svdtrt("verify", bundle)


def make_precision(bundle: str | os.PathLike, precision: str, source: str, calibrated: bool = True,
                   have: dict[str, set[str]] | None = None) -> str:
    """The one command line that gives ``bundle`` graphs of ``precision`` for every component.

    Args:
        bundle: the bundle's path as the user gave it.
        precision: a registry name (:data:`svdtrt.precisions.PRECISIONS`).
        source: the bundle's source model (``manifest.source.name``): what ``export`` re-exports.
        calibrated: whether the bundle has the ``default`` calibration set (quantizing needs one).
        have: ``{component: precisions it has graphs of}``; None means "nothing is known to be
            missing but ``precision`` itself" (the whole bundle is made again at that precision).
    Returns:
        A command, or commands chained with ``&&``, that adds what is missing and replaces
        nothing that exists: fp32 graphs missing from some components are exported for those at
        once (with ``--precision fp16`` too when fp16 is wanted); fp16 graphs are converted from
        the fp32 ones, for the components that lack them; quantized graphs need a calibration set
        first, and are made for every component at once (``quantize --force`` where some exist).
    """
    p = PRECISIONS[precision]
    have = have if have is not None else {name: {"fp32"} for name in COMPONENTS}
    # The block-caching graphs are optional: a bundle without them lacks nothing.
    needed = [c for c in COMPONENTS if c in have or c in SVD_COMPONENTS]
    no_fp32 = [c for c in needed if "fp32" not in have.get(c, ())]
    lacking = [c for c in needed if precision not in have.get(c, ())]
    existing = any(precision in have.get(c, ()) for c in COMPONENTS)
    if p.made_by == "export":
        return export(source, bundle, components=no_fp32 or None)
    if p.made_by == "convert":
        if no_fp32 and set(lacking) <= set(no_fp32):
            return export(source, bundle, components=no_fp32, precision=precision)
        return chain(export(source, bundle, components=no_fp32) if no_fp32 else "",
                     convert(bundle, precision, components=lacking if existing else None))
    return chain(export(source, bundle, components=no_fp32) if no_fp32 else "",
                 "" if calibrated else calibrate(bundle),
                 quantize(bundle, precision, force=existing))


def build(bundle: str | os.PathLike, precision: str, profile: str | None = None,
          shapes: dict[str, int] | None = None, components: list[str] | None = None, force: bool = False) -> str:
    """``svdtrt build BUNDLE --precision P [--profile K] [--frames F --height H --width W]
    [--components NAME ...] [--force]``."""
    words = ["build", bundle, "--precision", precision]
    if profile:
        words += ["--profile", profile]
    for key, value in (shapes or {}).items():
        words += [f"--{key}", value]
    if components:
        words += ["--components", *components]
    return svdtrt(*words, *(["--force"] if force else []))


def source_root() -> Path | None:
    """The folder svdtrt was installed from when it is an editable install of a clone (the one
    holding ``pyproject.toml``), else None (an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def install_extra(extra: str = GPU_EXTRA, replace_onnxruntime: bool = False) -> str:
    """The pip command that adds the optional packages of ``extra`` to this installation.

    From a clone (svdtrt is not on PyPI) it names the clone's own folder, so it works from any
    working directory; TensorRT's libraries come from NVIDIA's index. ``replace_onnxruntime``
    removes the CPU ``onnxruntime`` first: it owns the same module as ``onnxruntime-gpu``.
    """
    root = source_root()
    target = ["-e", f"{root}[{extra}]"] if root else [f"svdtrt[{extra}]"]
    index = ["--extra-index-url", NVIDIA_INDEX] if extra == GPU_EXTRA else []
    install = shlex.join(["pip", "install", *target, *index])
    return chain("pip uninstall -y onnxruntime" if replace_onnxruntime else "", install)


def tune(bundle: str | os.PathLike, min_psnr_db: float | None = 30.0, min_ssim: float | None = None,
         backend: str | None = None, force: bool = False) -> str:
    """``svdtrt tune BUNDLE [--backend B] [--min-psnr DB] [--min-ssim S] --apply [--force]``: the
    command that measures a bundle's profiles (again, with ``force``: replacing those there)."""
    words = ["tune", bundle]
    if backend and backend != "onnxruntime":
        words += ["--backend", backend]
    if min_psnr_db is not None:
        words += ["--min-psnr", f"{min_psnr_db:g}"]
    if min_ssim is not None:
        words += ["--min-ssim", f"{min_ssim:g}"]
    return svdtrt(*words, "--apply", *(["--force"] if force else []))
