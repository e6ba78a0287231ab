"""The bundle: a directory of graphs, engines, processing configs and a ``manifest.json``.

Layout (DESIGN.md, "The bundle")::

    BUNDLE/manifest.json
    BUNDLE/<component>.<precision>.onnx        + .onnx.data (one external-data file per graph)
    BUNDLE/scheduler/scheduler_config.json     (EulerDiscreteScheduler)
    BUNDLE/feature_extractor/preprocessor_config.json  (CLIPImageProcessor)

A bundle is written into a temporary sibling directory and renamed into place only when
complete (:func:`writing`), so an interrupted export leaves no half bundle behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import BundleError, InputError, first_line
from .specs import ModelDims

#: Bumped whenever a change makes older bundles unreadable; :meth:`Bundle.open` refuses others.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def graph_filename(component: str, precision: str) -> str:
    """File name of a component's graph, e.g. ``unet.fp16.onnx``."""
    return f"{component}.{precision}.onnx"


class Bundle:
    """A bundle opened for reading (and for adding graphs to, by later stages).

    Attributes:
        path: the bundle directory.
        manifest: the parsed ``manifest.json``.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Bundle":
        """Open and check the bundle at ``path``.

        Raises:
            BundleError: no such directory, no or unreadable manifest, another format version,
                or a graph the manifest lists is missing.
        """
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"no bundle at '{path}': create one with 'svdtrt export MODEL --out {path}'")
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise BundleError(f"'{path}' is not a bundle (no {MANIFEST}); re-export it with 'svdtrt export'") from None
        except (OSError, ValueError) as e:
            raise BundleError(f"bundle '{path}' has a corrupt {MANIFEST} ({e}); re-export it with 'svdtrt export'") from None
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if version != FORMAT_VERSION:
            raise BundleError(
                f"bundle '{path}' has format version {version}, this svdtrt reads version {FORMAT_VERSION}; "
                "re-export it with this version of svdtrt"
            )
        bundle = cls(path, manifest)
        for name, entry in manifest.get("components", {}).items():
            for precision, graph in entry.get("graphs", {}).items():
                for key in ("file", "data"):
                    if graph.get(key) and not (path / graph[key]).is_file():
                        raise BundleError(f"bundle '{path}' is incomplete: {graph[key]} is missing; "
                                          "re-export it with 'svdtrt export --force'")
        return bundle

    @property
    def dims(self) -> ModelDims:
        return ModelDims(**self.manifest["dims"])

    @property
    def scheduler_config(self) -> dict:
        return self.manifest["configs"]["scheduler"]

    @property
    def feature_extractor_config(self) -> dict:
        return self.manifest["configs"]["feature_extractor"]

    @property
    def default_shape(self) -> tuple[int, int, int]:
        """(frames, height, width) the bundle was exported at (the optimal shape of its ranges)."""
        s = self.manifest["shapes"]
        return s["frames"]["opt"], s["height"]["opt"], s["width"]["opt"]

    def graph_path(self, component: str, precision: str = "fp32") -> Path:
        """Path of a component's graph.

        Raises:
            BundleError: the bundle has no such graph.
        """
        graphs = self.manifest.get("components", {}).get(component, {}).get("graphs", {})
        if precision not in graphs:
            have = ", ".join(graphs) or "none"
            make = (f"svdtrt quantize {self.path} --precision {precision}" if precision in ("int8", "fp8") else
                    f"svdtrt export MODEL --out {self.path} --components {component} --precision {precision}")
            raise BundleError(f"bundle '{self.path}' has no {precision} graph for {component} (has: {have}); "
                              f"create it with '{make}'")
        return self.path / graphs[precision]["file"]

    def save_manifest(self) -> None:
        """Write ``manifest.json`` atomically (write a temporary file, then rename)."""
        write_json_atomic(self.path / MANIFEST, self.manifest)


def write_json_atomic(path: Path, data) -> None:
    """Write ``data`` as indented JSON to ``path`` through a temporary file and a rename."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename, so that
    ``path`` holds either its old content or all of the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's file-mode creation mask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: Path, force: bool, file: bool = False) -> None:
    """Refuse to replace an existing ``path`` unless ``force``; for a ``file`` target (a clip, a
    report), also refuse a folder and a folder that does not exist.

    Raises:
        InputError: ``path`` exists and ``force`` is false, or a file target cannot be written.
    """
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"'{path}' already exists; choose another path or pass --force to replace it")
    if file and path.is_dir():
        raise InputError(f"'{path}' is a folder; give a file name")
    if file and not path.parent.is_dir():
        raise InputError(f"folder '{path.parent}' does not exist; create it or choose another path")


@contextlib.contextmanager
def writing(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out``; on success it replaces ``out``.

    On any exception the temporary directory is removed and ``out`` is left as it was.

    Raises:
        InputError: ``out`` exists and ``force`` is false.
    """
    out = Path(out)
    check_writable(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise InputError(f"cannot write '{out}': {e.strerror or first_line(e)}") from None
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; a bundle is an ordinary directory
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, out: Path) -> None:
    """Move directory ``new`` to ``out``; an existing ``out`` is renamed aside first and removed
    only once ``new`` is in place."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)  # put the user's directory back under its own name
        raise
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
