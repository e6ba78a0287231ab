"""The bundle: a folder of graphs, engines, calibration shards, processing configs and a
``manifest.json`` that lists every file with its size and sha256 (docs/architecture.md,
"The bundle").

:meth:`Bundle.open` validates the manifest (:mod:`svdtrt.bundle.manifest`) and checks that every
listed file is a regular file inside the bundle with its recorded size; hashes are checked by
``svdtrt verify`` and by the stages that read a file (:meth:`Bundle.check_file`). A damaged file's
message names the command that repairs it and keeps the rest (:mod:`svdtrt.bundle.repair`).

Every change goes through :func:`changing` (an existing bundle) or :func:`creating` (a new
one): a :class:`Staged` bundle under the bundle's lock, published in one atomic step by
:meth:`Staged.commit`, which records the size and sha256 of each new file (files carried over
unchanged keep their records, so hashing is paid once per file).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from .. import hints
from ..environment import cache_dir
from ..errors import BundleError, InputError, first_line
from ..graphs.files import data_filename, graph_bytes, share_external_data
from ..precisions import precision as lookup_precision
from ..progress import status
from ..publishing import (
    DirectoryTransaction,
    FolderKind,
    NotARegularFile,
    checkpoint,
    path_kind,
    read_file,
    write_new,
)
from ..specs import COMPONENTS, ModelDims
from . import manifest as schema
from .engines import ENGINE_DIR
from .manifest import CONFIG_FILES, MANIFEST, GraphEntry, Manifest
from .repair import Repair, repair

#: What a bundle folder holds at its top level (docs/architecture.md, "The bundle"; "calibration"
#: is the calibration stage's folder): the only folders ``export --force`` replaces.
BUNDLE_FOLDER = FolderKind("a bundle", MANIFEST, (
    MANIFEST, "*.onnx", "*.onnx.data", "calibration", ENGINE_DIR,
    *sorted({name.split("/")[0] for name in CONFIG_FILES.values()})), suffix=".bundle")

#: The most ``manifest.json`` may hold: 64 MiB, far above a bundle with large calibration sets
#: (about 1 MB); a larger one is refused unread.
MAX_MANIFEST_BYTES = 64 * 2**20

log = logging.getLogger(__name__)


def graph_filename(component: str, precision: str) -> str:
    """File name of a component's graph, e.g. ``unet.fp16.onnx`` (its weights: ``+ .data``)."""
    return f"{component}.{precision}.onnx"


def owned_files(manifest: Manifest, component: str, graph: GraphEntry | None) -> list[str]:
    """The files of ``component``'s ``graph`` that go with it when it is replaced or removed: its
    graph file and weights file, except a file another component's graph also reads (the
    block-caching graphs read the UNet's weights file, docs/architecture.md "Block caching"); none
    for an entry that points at another precision's graph (``kept_precision``)."""
    if graph is None or graph.kept_precision:
        return []
    others = {f for name, entry in manifest.components.items() if name != component
              for g in entry.graphs.values() for f in (g.file, g.data) if f}
    return [f for f in (graph.file, graph.data) if f and f not in others]


class HashCache:
    """sha256 of files, remembered per file version in ``$XDG_CACHE_HOME/svdtrt/sha256.json``
    (``~/.cache`` by default): a file whose (device, inode, size, mtime, ctime) is unchanged is
    not read again. ctime is in the key because it cannot be set back: a file changed in place
    with its mtime restored (``touch -d``) is hashed again. Linking a file into a new bundle
    state changes its ctime too; :meth:`Staged.commit` carries the hashes of the files it carries
    over to their new ctime. The cache is an optimisation only; losing it costs one more hash."""

    def __init__(self):
        self.path = cache_dir() / "sha256.json"
        self._data: dict | None = None  # read once per instance

    @staticmethod
    def _key(path: Path) -> str:
        s = os.stat(path)
        return f"{s.st_dev}:{s.st_ino}:{s.st_size}:{s.st_mtime_ns}:{s.st_ctime_ns}"

    def _load(self) -> dict:
        if self._data is None:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError, RecursionError):
                data = {}
            self._data = data if isinstance(data, dict) else {}
        return self._data

    def known(self, path: Path) -> str | None:
        """The remembered sha256 of the current version of ``path``, or None."""
        try:
            known = self._load().get(self._key(path))
        except OSError:
            return None
        return known if isinstance(known, str) else None

    def sha256(self, path: Path) -> str:
        known = self.known(path)
        if known is not None:
            return known
        digest = sha256_file(path)
        self.remember({path: digest})
        return digest

    def remember(self, digests: dict[Path, str]) -> None:
        """Record each ``{path: sha256}`` for the current version of the path (best effort)."""
        with contextlib.suppress(OSError):
            self._data = None  # another process may have added versions meanwhile
            data = self._load()
            data.update({self._key(path): digest for path, digest in digests.items()})
            if len(data) > 10000:  # forget the oldest versions
                data = dict(list(data.items())[-5000:])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_new(self.path, json.dumps(data).encode())


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a regular file, read in 16 MiB chunks (a full-size fp32 SVD UNet is about
    6 GB). The file is opened without blocking and checked to be a regular file first, so a FIFO
    or a device put in a bundle's place fails at once.

    Raises:
        OSError: it cannot be read, or is not a regular file (``EINVAL``).
    """
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"is {path_kind(path)}, not a file", str(path))
        os.set_blocking(fd, True)
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Bundle:
    """A bundle opened for reading.

    Attributes:
        path: the bundle folder.
        manifest: its validated :class:`svdtrt.bundle.manifest.Manifest`.
    """

    def __init__(self, path: Path, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike, complete: bool = True) -> Bundle:
        """Open the bundle at ``path``: validate its manifest and the size of every file.

        Args:
            complete: check that every listed file is there with its recorded size. A writer
                opens with False, so that it can change (and repair) a damaged bundle: it hashes
                each file it reads (:meth:`check_file`), and carries the others over as they are.
        Raises:
            BundleError: ``path`` is not a bundle (the message proposes where to export one,
                never over what is there), no or an invalid manifest (naming the field), another
                format version, or a listed file that is a link or outside the bundle, or (with
                ``complete``) missing or of another size than recorded (naming the file and the
                command that repairs it).
        """
        bundle = cls(Path(path), read_manifest(path))
        problems = bundle.file_problems(sizes=complete)
        if problems:
            name, problem = problems[0]
            raise BundleError(f"bundle '{bundle.path}': {problem}; {bundle.remedy(name)}")
        return bundle

    def file_problems(self, sizes: bool = True) -> list[tuple[str, str]]:
        """``(file, what is wrong)`` for each listed file that is a link or leads outside the
        bundle and, with ``sizes``, each that is missing, not a regular file or of another size
        than recorded (``stat`` only; no file is read)."""
        root, problems = os.path.realpath(self.path), []
        for name, record in self.manifest.files.items():
            file = self.path / name
            if file.is_symlink() or (os.path.lexists(file) and not os.path.realpath(file).startswith(root + os.sep)):
                outside = f"{name} is a link or leads outside the bundle; svdtrt reads only files inside it"
                problems.append((name, outside))
            elif sizes and not file.is_file():
                what = "missing" if not os.path.lexists(file) else f"{path_kind(file)}, not a file"
                problems.append((name, f"{name} is {what}"))
            elif sizes and file.stat().st_size != record.bytes:
                problems.append((name, (f"{name} has {file.stat().st_size} bytes, the manifest records "
                                        f"{record.bytes} (a partial copy or a replaced file)")))
        return problems

    @property
    def dims(self) -> ModelDims:
        return ModelDims(**self.manifest.dims.model_dump())

    @property
    def source(self) -> str:
        """The ``MODEL`` argument that rebuilds the bundle's source model."""
        return self.manifest.source.name

    @property
    def scheduler_config(self) -> dict:
        return self.manifest.configs["scheduler"]

    @property
    def feature_extractor_config(self) -> dict:
        return self.manifest.configs["feature_extractor"]

    @property
    def default_shape(self) -> tuple[int, int, int]:
        """(frames, height, width) the bundle was exported at (the optimal shape of its ranges)."""
        s = self.manifest.shapes
        return s.frames.opt, s.height.opt, s.width.opt

    def outside_range(self, frames: int, height: int, width: int) -> str | None:
        """Why a clip size is outside the ranges the bundle was exported for (naming each range),
        or None when it is inside. Graphs keep dynamic axes, so ONNX Runtime may still run it;
        TensorRT engines built from the bundle's profiles cannot."""
        s, out = self.manifest.shapes, []
        for name, value, r in (("frames", frames, s.frames), ("height", height, s.height), ("width", width, s.width)):
            if not r.min <= value <= r.max:
                out.append(f"{name} {value} is outside {r.min}..{r.max}")
        if not out:
            return None
        return f"{', '.join(out)}, the range bundle '{self.path}' was exported for"

    def precisions(self) -> list[str]:
        """The precisions any component has a graph of, in registry order."""
        from ..precisions import NAMES

        have = {p for c in self.manifest.components.values() for p in c.graphs}
        return [p for p in NAMES if p in have]

    def graph(self, component: str, precision: str) -> GraphEntry:
        """The manifest entry of a component's graph.

        Raises:
            InputError: an unknown precision (the message lists the choices).
            BundleError: the bundle has no such graph; the message is the command that makes it.
        """
        p = lookup_precision(precision)
        entry = self.manifest.components.get(component)
        graphs = entry.graphs if entry else {}
        if precision not in graphs:
            have = ", ".join(graphs) or "none"
            make = self.make_command(p.name)
            raise BundleError(f"bundle '{self.path}' has no {precision} graph for {component} (has: {have}); "
                              f"create it with '{make}'")
        return graphs[precision]

    def make_command(self, precision: str) -> str:
        """The one command line that gives every component a graph of ``precision``
        (:func:`svdtrt.hints.make_precision`, from what the manifest lists)."""
        have = {name: set(entry.graphs) for name, entry in self.manifest.components.items()}
        return hints.make_precision(self.path, precision, self.source, "default" in self.manifest.calibration,
                                    have)

    def graph_path(self, component: str, precision: str = "fp32") -> Path:
        """Path of a component's graph (see :meth:`graph` for the errors)."""
        return self.path / self.graph(component, precision).file

    def graph_identity(self, component: str, precision: str) -> str:
        """One sha256 over a graph and its weights file, from the manifest's records (no hashing):
        what an engine built from the graph records, since it bakes the weights in."""
        graph = self.graph(component, precision)
        h = hashlib.sha256()
        for name in (graph.file, graph.data):
            if name:
                h.update(f"{Path(name).name}:{self.manifest.files[name].sha256}\n".encode())
        return h.hexdigest()

    def check_file(self, name: str) -> Path:
        """Path of file ``name`` after checking its content against the manifest's sha256.

        A file is hashed once per version: the result is remembered in the user's cache
        (:class:`HashCache`) under the file's identity (device, inode, size, mtime, ctime), so
        later readers in this run and later runs pay a ``stat``, and a file changed in place is
        hashed again.

        Raises:
            BundleError: the file is missing, not a regular file, or its content differs from the
                record (a corrupted or replaced file); the message names the file and the command
                that repairs it.
        """
        path = self.path / name
        try:
            digest = HashCache().sha256(path)
        except OSError as e:
            what = "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({e.strerror})"
            raise BundleError(f"bundle '{self.path}': {name} is {what}; {self.remedy(name)}") from None
        if digest != self.manifest.files[name].sha256:
            raise BundleError(f"bundle '{self.path}': {name} does not match its recorded sha256 (a corrupted or "
                              f"replaced file); {self.remedy(name)}")
        return path

    def repair(self, names: list[str]) -> Repair:
        """What repairs the damaged files ``names`` and keeps the rest (:func:`svdtrt.bundle.repair.repair`)."""
        return repair(self.path, self.manifest, names)

    def remedy(self, name: str) -> str:
        """What to run to repair damaged file ``name`` of the bundle, as a sentence ending in a command."""
        return self.repair([name]).sentence()

    def unloadable(self, name: str, error: Exception) -> BundleError:
        """The one-line error for graph file ``name`` that ONNX Runtime refused to load or run
        (``error``, one of ORT's own Fail/InvalidGraph/RuntimeException types, e.g. external data
        pointing outside the bundle): the file, ORT's first line, and the command that repairs it."""
        return BundleError(f"ONNX Runtime cannot load {name} of bundle '{self.path}' ({first_line(error)[:200]}); "
                           f"{self.remedy(name)}")


def read_manifest(path: str | os.PathLike) -> Manifest:
    """The validated manifest of the bundle at ``path`` (read as a regular file of at most
    :data:`MAX_MANIFEST_BYTES`: a FIFO or a device in its place fails at once).

    Raises:
        BundleError: ``path`` is not a bundle folder (see :func:`not_a_bundle`), or its manifest
            is a link, not a regular file, too large or invalid (:func:`svdtrt.bundle.manifest.parse`).
    """
    path = Path(path)
    file = path / MANIFEST
    if not path.is_dir() or not os.path.lexists(file):
        raise BundleError(not_a_bundle(path))
    try:
        if file.is_symlink():
            raise NotARegularFile("is a link; svdtrt reads only files inside the bundle")
        text = read_file(file, MAX_MANIFEST_BYTES)
    except NotARegularFile as e:
        raise BundleError(f"bundle '{path}': {MANIFEST} {e}; {schema.reexport(path, None)}") from None
    except OSError as e:
        raise BundleError(f"cannot read {file}: {e.strerror}") from None
    return schema.parse(text, str(path))


def is_bundle_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding ``manifest.json`` and nothing a bundle does not hold
    (its manifest is not read: a damaged bundle is a bundle)."""
    return path.is_dir() and os.path.lexists(path / MANIFEST) and BUNDLE_FOLDER.foreign(path) is None


def not_a_bundle(path: Path) -> str:
    """Why ``path`` (no folder holding ``manifest.json``) is not a bundle, and where to make one:
    there if nothing (or an empty folder) is there, else at a fresh path beside it; a path inside a
    bundle names the bundle instead."""
    inside = next((p for p in path.absolute().parents if is_bundle_folder(p)), None)
    if inside is not None:
        shown = os.path.relpath(inside) if not path.is_absolute() else inside
        return f"'{path}' is {path_kind(path)} inside bundle '{shown}'; give the bundle's folder, '{shown}'"
    preset = (f"({hints.EXAMPLE_MODEL} is the demo preset; MODEL may also be a diffusers SVD directory or a "
              "hub id)")
    if not os.path.lexists(path):
        return f"bundle '{path}' is not found; create one with '{hints.first_export(path)}' {preset}"
    if not path.is_dir():
        return (f"bundle '{path}' is {path_kind(path)}, not a bundle folder; create one beside it with "
                f"'{hints.first_export(hints.fresh_path(path, BUNDLE_FOLDER.suffix))}' {preset}")
    if not any(path.iterdir()):  # an empty folder: export writes into it
        return f"'{path}' is not a bundle (an empty folder); create one there with '{hints.first_export(path)}'"
    return (f"'{path}' is a folder but not a bundle (no {MANIFEST}); create a bundle beside it with "
            f"'{hints.first_export(hints.fresh_path(path, BUNDLE_FOLDER.suffix))}'")


class Staged:
    """A bundle being changed: files go into :attr:`path`, the new manifest into :attr:`manifest`,
    and :meth:`commit` publishes both at once.

    Files of the current bundle that the stage neither replaces nor :meth:`remove`-s are
    carried over (hard-linked in) by :meth:`commit`; until then stages read the current files
    from ``old.path``, and :attr:`path` holds only what they wrote.

    Attributes:
        path: the staging folder.
        manifest: the new manifest (a copy of the current one, for a change; None for a new
            bundle until the stage sets it).
        old: the bundle as it was when the lock was taken (None for a new bundle).
        target: where the bundle is published.
    """

    def __init__(self, txn: DirectoryTransaction, old: Bundle | None):
        self._txn, self.old, self.target = txn, old, txn.target
        self.path = txn.path
        self.manifest: Manifest | None = old.manifest.model_copy(deep=True) if old else None
        self._dropped: set[str] = set()

    def scratch(self, name: str) -> Path:
        """A scratch folder for intermediate files (never part of the bundle)."""
        return self._txn.scratch(name)

    def remove(self, name: str) -> None:
        """Drop file ``name`` from the new state (its manifest entry is the caller's to drop)."""
        self._dropped.add(name)
        with contextlib.suppress(FileNotFoundError):
            (self.path / name).unlink()

    def current(self, name: str) -> Path | None:
        """Where file ``name`` of the new state is now: the staged one if a stage wrote it, else the
        current bundle's, which :meth:`commit` carries over; None if the new state will not have it."""
        if (self.path / name).exists():
            return self.path / name
        if self.old is not None and name not in self._dropped and name in self.old.manifest.files:
            return self.old.path / name
        return None

    def drop_graph(self, component: str, precision: str | None = None) -> None:
        """Drop ``component``'s graph of ``precision`` from the new state, with the engines built
        from it; with ``precision`` None, every graph of the component and its manifest entry.

        The graph's files go (:func:`owned_files`: not a weights file another component's graph
        reads, nor the graph an entry with ``kept_precision`` points at) and so does every engine
        of the component at that precision (any precision, for None), with its sidecar: an engine
        is built from one graph.
        """
        entry = self.manifest.components.get(component)
        for p in (list(entry.graphs) if precision is None else [precision]) if entry else []:
            for file in owned_files(self.manifest, component, entry.graphs.get(p)):
                self.remove(file)
            entry.graphs.pop(p, None)
        if precision is None:
            self.manifest.components.pop(component, None)
        for key, engine in list(self.manifest.engines.items()):
            if engine.component == component and precision in (None, engine.precision):
                self.remove(engine.engine)
                self.remove(engine.sidecar)
                del self.manifest.engines[key]

    def share_weights(self, component: str, precision: str, graph: GraphEntry) -> GraphEntry:
        """Point a staged graph of a component that copies another's weights
        (``spec.shares_weights_with``) at that component's weights file of the same precision,
        where every tensor matches (:func:`~svdtrt.graphs.files.share_external_data`). The owner's
        graph is the one the new bundle will have: staged in this transaction, or kept from the
        bundle (when only the caching graphs are re-exported).

        Args:
            graph: the staged graph's entry; ``graph.file`` is in :attr:`path`.
        Returns:
            The entry, reading the owner's weights file, or as it is when there is no owner graph
            or a tensor differs.
        """
        owner = COMPONENTS[component].shares_weights_with
        owner_graph = self.current(graph_filename(owner, precision)) if owner else None
        if owner_graph is not None and owner_graph.parent != self.path:  # kept from the bundle: verify it first
            kept = self.old.manifest.components[owner].graphs[precision]
            for name in (kept.file, kept.data):
                if name:
                    self.old.check_file(name)
        path = self.path / graph.file
        if owner_graph is None or not share_external_data(path, owner_graph):
            return graph
        return graph.model_copy(update={"data": data_filename(owner_graph), "bytes": graph_bytes(path)})

    def write_json(self, name: str, data: dict) -> None:
        """Write ``data`` as the staged file ``name`` (a new file, never through a link)."""
        (self.path / name).parent.mkdir(parents=True, exist_ok=True)
        write_new(self.path / name, (json.dumps(data, indent=2) + "\n").encode())

    def commit(self) -> Bundle:
        """Record every staged file, write the manifest and publish the bundle atomically.

        Files carried over are hard-linked in as they are: one the old state lacks (a damaged
        bundle being repaired) keeps its record, so the new state is exactly as damaged there as
        the old one, and the repair that follows still knows what it should be. The processing
        configs are written from the manifest's ``configs`` every time (a few KB; so any change
        also repairs them). The hashes the user's cache knew for the carried-over files are
        carried to their new ctime (:class:`HashCache`).

        Raises:
            InputError: something appeared at the target meanwhile (without ``force``).
        """
        checkpoint("commit")
        cache = HashCache()
        files, carried = {}, {}
        old = self.old.manifest.files if self.old else {}
        # hashing gigabytes of new graphs takes seconds: a ticking status line says what runs
        with status(f"recording and publishing bundle '{self.target}'", logger=log):
            for key, name in CONFIG_FILES.items():
                if key in self.manifest.configs:
                    self.write_json(name, self.manifest.configs[key])
            for name in old:
                if name in self._dropped or os.path.lexists(self.path / name):
                    continue
                if not (self.old.path / name).is_file():
                    files[name] = old[name]  # damaged before this change: carried as it is
                    continue
                (self.path / name).parent.mkdir(parents=True, exist_ok=True)
                carried[name] = cache.known(self.old.path / name)
                try:
                    os.link(self.old.path / name, self.path / name)
                except OSError:  # a file system without hard links
                    shutil.copy2(self.old.path / name, self.path / name)
            fresh = {}
            for folder, _, names in os.walk(self.path):
                for n in names:
                    full = Path(folder) / n
                    rel = full.relative_to(self.path).as_posix()
                    if rel == MANIFEST:
                        continue
                    if rel in old and self.old is not None and _same_file(full, self.old.path / rel):
                        files[rel] = old[rel]
                    else:
                        files[rel] = schema.FileRecord(bytes=full.stat().st_size, sha256=sha256_file(full))
                        fresh[full] = files[rel].sha256  # the published file keeps its inode and ctime
            cache.remember(fresh)
            self.manifest.files = dict(sorted(files.items()))
            checkpoint("recorded")
            write_new(self.path / MANIFEST, schema.dump(self.manifest))
            self._txn.publish()
            # Linking a file in (and removing the old state's link) changed its ctime, not its content.
            cache.remember({self.target / name: digest for name, digest in carried.items() if digest is not None})
        written = sorted(full.relative_to(self.path).as_posix() for full in fresh)
        log.info("bundle '%s': %d files written (%.1f MiB: %s), %d kept", self.target, len(written),
                 sum(files[f].bytes for f in written) / 2**20, ", ".join(written), len(files) - len(written))
        return Bundle.open(self.target, complete=False)


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


@contextlib.contextmanager
def changing(path: str | os.PathLike) -> Iterator[Staged]:
    """Change the bundle at ``path`` in one transaction: ``with changing(p) as staged: ...;
    staged.commit()``. The bundle is re-opened under the lock, so the change starts from the
    state the last writer left; leaving the block without ``commit`` changes nothing. A damaged
    bundle can be changed (``Bundle.open(complete=False)``): a stage hashes what it reads
    (:meth:`Bundle.check_file`), which is how a repair replaces what is damaged.

    Raises:
        BundleError: not a bundle (see :meth:`Bundle.open`).
        InputError: the bundle's folder cannot be written (read-only, permissions).
    """
    path = Path(path)
    Bundle.open(path, complete=False)  # a clear error before taking a lock for something that is no bundle
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise InputError(f"bundle '{path}' cannot be changed: its folder is read-only here; "
                         "copy it somewhere writable first")
    with DirectoryTransaction(path, BUNDLE_FOLDER, expect_existing=True) as txn:
        yield Staged(txn, Bundle.open(path, complete=False))


@contextlib.contextmanager
def creating(path: str | os.PathLike, force: bool = False) -> Iterator[Staged]:
    """Create a new bundle at ``path`` in one transaction (``staged.manifest`` must be set
    before ``commit``). Nothing but an empty folder, or with ``force`` a bundle
    (:data:`BUNDLE_FOLDER`), may be at ``path`` (now, or appearing before the commit); anything
    else is refused and left untouched.

    Raises:
        InputError: ``path`` is taken without ``force``, or holds something that is not a bundle;
            its folder is missing or read-only.
    """
    with DirectoryTransaction(path, BUNDLE_FOLDER, force=force) as txn:
        yield Staged(txn, None)
