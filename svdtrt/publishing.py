"""The filesystem layer: locks, staged writes and atomic publishing, used by every writer
(docs/architecture.md, "Transactions").

Two mechanisms, one rule (an output appears complete or not at all; it replaces an existing
output of its own kind only with ``force``, and never anything svdtrt did not make):

- :class:`DirectoryTransaction`: a bundle (or the demo's folder) changes as a whole. Under an
  exclusive lock (:class:`Lock`, on a file in the user's cache folder), the new state is staged
  in a sibling folder ``.NAME.txn-<id>`` (files carried over unchanged are hard-linked in just before publishing,
  so staging costs no copy; writers only ever create new files, never write through a link),
  and is published in one atomic step:
  ``renameat2(RENAME_EXCHANGE)`` swaps it with the old folder, or ``RENAME_NOREPLACE`` puts a
  new one where nothing is. A kill at any instant leaves the old folder or the new one; the
  staged or swapped-out folder left behind is removed by the next command that takes the lock.
- :class:`OutputFile`: a clip, frames or report is written to ``.NAME.part-<id>SUFFIX`` beside
  its target while that file is flock-ed, and linked to the target (``link`` fails if anything
  appeared there meanwhile) or, with ``force``, renamed over it. Parts whose writer died (their
  flock is free) are removed by the next writer of the same target.

What counts as svdtrt's own output is said by the writer: a :class:`FolderKind` (the top-level
names a bundle, the demo's folder or bench's results hold) or a :class:`FileKind` (how a clip, saved
frames or a JSON report begins). Nothing here knows what a bundle holds; :mod:`svdtrt.bundle.store`
builds on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import hints
from .environment import cache_dir
from .errors import InputError

log = logging.getLogger(__name__)

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def checkpoint(name: str) -> None:
    """A named instant of a transaction. The kill tests (tests/test_transactions.py) set
    ``SVDTRT_KILL_AT`` to a name to SIGKILL the process exactly there; otherwise a no-op."""
    if os.environ.get("SVDTRT_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    """Linux ``renameat2``; raises OSError (ENOSYS/EINVAL where the kernel or file system lacks it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` atomically, failing with FileExistsError if ``dst`` exists.

    Uses ``RENAME_NOREPLACE``; where the kernel lacks it, falls back to ``os.link`` for a file
    and to a check followed by ``os.rename`` for a folder (the caller holds the lock, so only a
    process that ignores svdtrt's lock can slip in between).
    """
    try:
        _renameat2(src, dst, _RENAME_NOREPLACE)
        return
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
    if src.is_dir():
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", str(dst))
        os.rename(src, dst)
    else:
        os.link(src, dst)
        os.unlink(src)


def exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (``RENAME_EXCHANGE``); False where the kernel lacks it."""
    try:
        _renameat2(a, b, _RENAME_EXCHANGE)
        return True
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EINVAL):
            return False
        raise


def remove(path: Path) -> None:
    """Remove a file, link or folder tree; nothing if it is gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def umask() -> int:
    """The process's file-mode creation mask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root``, so a published state survives a power loss too."""
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def path_kind(path: str | os.PathLike) -> str:
    """What is at ``path``, for messages about a path of the wrong kind: ``"a folder"``,
    ``"a file"``, ``"a broken link"``, ``"a FIFO"``, ``"a device"``, ``"a socket"``, or ``"not
    found"`` (links are followed)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a broken link" if path.is_symlink() else "not found"
    return _mode_kind(mode)


def _mode_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file or folder"


class NotARegularFile(ValueError):
    """What :func:`read_file` refuses: ``str()`` says why, as a phrase (``"is a FIFO, not a file"``)."""


def read_file(path: str | os.PathLike, limit: int, head: bool = False) -> bytes:
    """The bytes of the regular file at ``path``: all of them, refusing a file over ``limit``
    bytes, or with ``head`` its first ``limit`` bytes.

    The file is opened without blocking (a FIFO opens at once instead of waiting for a writer) and
    checked on its descriptor before a byte is read, so a FIFO, a device such as ``/dev/zero`` or
    a file over ``limit`` costs nothing.

    Raises:
        NotARegularFile: not a regular file, or (without ``head``) larger than ``limit`` bytes.
        OSError: it cannot be opened (missing, permissions).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(f"is {_mode_kind(st.st_mode)}, not a file")
        if st.st_size > limit and not head:
            raise NotARegularFile(f"has {st.st_size} bytes, more than svdtrt reads there ({limit})")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + (0 if head else 1))
        if len(data) > limit:  # it grew while being read
            raise NotARegularFile(f"has more than {limit} bytes, more than svdtrt reads there")
        return data
    finally:
        os.close(fd)


def os_error_message(path: Path, e: OSError) -> str:
    """One line for an OSError met while writing ``path`` (full disk, read-only, permissions)."""
    if e.errno == errno.ENOSPC:
        return f"the disk is full while writing '{path}'; free space and run the command again"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write '{path}': {e.strerror} (choose a writable location)"
    return f"cannot write '{path}': {e.strerror or e}"


@dataclass(frozen=True)
class FolderKind:
    """A kind of folder svdtrt writes whole (a bundle, the demo's folder, bench's results): what
    ``--force`` may replace, told by its top-level names.

    Attributes:
        what: its name in messages, with an article (``"a bundle"``).
        marker: the entry every folder of this kind holds (``manifest.json`` for a bundle).
        names: ``fnmatch`` patterns of the top-level entries such a folder may hold.
        suffix: the suffix of a fresh name proposed beside a path that is taken (``".bundle"``).
    """

    what: str
    marker: str
    names: tuple[str, ...]
    suffix: str = ""

    def foreign(self, path: Path) -> str | None:
        """Why what is at ``path`` is not svdtrt's to replace as a folder of this kind, as a phrase
        (``"a file"``, ``"a folder that is not a bundle (no manifest.json)"``), or None when there is
        nothing, an empty folder, or a folder of this kind holding only its own names."""
        path = Path(path)
        if not os.path.lexists(path):
            return None
        if path.is_symlink():
            return "a link"
        if not path.is_dir():
            return path_kind(path)
        try:
            entries = sorted(os.listdir(path))
        except OSError as e:
            return f"a folder svdtrt cannot read ({e.strerror})"
        if not entries:
            return None
        if self.marker not in entries:
            return f"a folder that is not {self.what} (no {self.marker})"
        others = [n for n in entries if not any(fnmatch.fnmatchcase(n, p) for p in self.names)]
        if others:
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            return f"{self.what} holding {', '.join(others[:3])}{more}, which svdtrt did not put there"
        return None

    def check_target(self, path: str | os.PathLike, force: bool) -> None:
        """Refuse to write a folder of this kind at ``path`` unless there is nothing there, an empty
        folder, or (with ``force``) a folder of this kind.

        Raises:
            InputError: something svdtrt did not make is at ``path`` (``force`` or not: the message
                proposes a fresh path), or a folder of this kind is there and ``force`` is false.
        """
        reason = self.foreign(Path(path))
        if reason:
            raise InputError(f"'{path}' is {reason}; svdtrt replaces only {self.what} it made, even with --force: "
                             f"choose another path, e.g. '{hints.fresh_path(path, self.suffix)}'")
        if occupied(Path(path)) and not force:
            raise InputError(f"'{path}' already exists; choose another path or pass --force to replace it")


def occupied(path: Path) -> bool:
    """Whether something is at ``path`` that writing there would replace: anything but nothing
    or an empty folder."""
    if not os.path.lexists(path):
        return False
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            return bool(os.listdir(path))
    return True


@dataclass(frozen=True)
class FileKind:
    """A kind of file svdtrt writes (a clip, saved frames, a JSON report): what ``--force`` may
    replace, told by how the file begins.

    Attributes:
        what: its name in messages, with an article (``"a clip"``).
        recognise: whether the first bytes of an existing file (at most :data:`HEAD_BYTES`) are
            such a file's.
    """

    what: str
    recognise: Callable[[bytes], bool]

    @classmethod
    def starting_with(cls, what: str, *signatures: tuple[int, bytes]) -> FileKind:
        """A kind recognised by magic bytes: ``(offset, bytes)`` pairs, any of which may match."""
        return cls(what, lambda head: any(head[at:at + len(sig)] == sig for at, sig in signatures))

    @classmethod
    def json_object_with(cls, what: str, *keys: str) -> FileKind:
        """A JSON report recognised by the top-level keys svdtrt writes in it."""
        def recognise(head: bytes) -> bool:
            try:
                data = json.loads(head)
            except (ValueError, RecursionError):
                return False
            return isinstance(data, dict) and set(keys) <= set(data)

        return cls(what, recognise)

    def foreign(self, path: Path) -> str | None:
        """Why the file at ``path`` is not svdtrt's to replace as a file of this kind, as a phrase,
        or None when it is one (or nothing is there)."""
        if not os.path.lexists(path):
            return None
        if path.is_symlink():
            return "a link"
        try:
            head = read_file(path, HEAD_BYTES, head=True)
        except NotARegularFile:
            return path_kind(path)
        except OSError as e:
            return f"a file svdtrt cannot read ({e.strerror})"
        return None if self.recognise(head) else f"a file that is not {self.what} svdtrt wrote"


#: How much of an existing file :class:`FileKind` reads to recognise it (a JSON report whole).
HEAD_BYTES = 16 * 2**20


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of ``target``: ``$XDG_CACHE_HOME/svdtrt/locks/<sha256 of its absolute
    path>.lock`` (docs/architecture.md, "Transactions"). The path is resolved through the
    links of its folder, so ``./b``, ``/abs/b`` and a path through a linked folder share one lock.
    ``target``'s folder must exist."""
    target = Path(target)
    where = os.path.join(os.path.realpath(target.parent), target.name)
    return cache_dir() / "locks" / f"{hashlib.sha256(os.fsencode(where)).hexdigest()[:32]}.lock"


class Lock:
    """An exclusive advisory lock (``flock``) on ``target``'s lock file (:func:`lock_path`).

    The lock file lives in the user's cache folder, not beside ``target``, so that nothing is left
    in the user's folders (a clone's ``git status``, a clip folder); it stays after use, because
    removing a lock file races with its next taker (who would lock a file no longer there). The
    lock is released when the holder exits, however it exits. A second taker waits, saying so
    once. Writing the holder's pid into the file is best effort (a full disk does not stop the
    lock).

    Raises:
        InputError: the folder of ``target`` does not exist, or the lock file cannot be made
            (the message names the cache folder).
    """

    def __init__(self, target: Path, purpose: str = "change"):
        self.target = Path(target)
        self.purpose = purpose
        self._fd: int | None = None

    def __enter__(self) -> Lock:
        if not self.target.parent.is_dir():
            raise InputError(f"folder '{self.target.parent}' does not exist; create it or choose another path")
        self.path = lock_path(self.target)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise InputError(f"cannot make svdtrt's lock file for '{self.target}' in '{self.path.parent}': "
                             f"{e.strerror or e} (set XDG_CACHE_HOME to a writable folder)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            print(f"svdtrt: waiting for another svdtrt process (pid {holder}) to finish with '{self.target}'",
                  file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):  # the pid is for the waiting message only
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


def leftovers(target: Path) -> list[Path]:
    """What killed transactions on ``target`` left beside it (call only under :class:`Lock`):
    staged folders ``.NAME.txn-*`` and swapped-out ones ``.NAME.old-*``, and the ``.NAME.*.tmp``
    and ``.NAME.old-PID`` folders of svdtrt 0.1."""
    parent, name = target.parent, target.name
    if not parent.is_dir():
        return []
    found = []
    for entry in parent.iterdir():
        n = entry.name
        if n.startswith(f".{name}.txn-") or n.startswith(f".{name}.old-") or (
                n.startswith(f".{name}.") and n.endswith(".tmp")):
            found.append(entry)
    return sorted(found)


def recover(target: Path) -> None:
    """Finish or undo what a killed transaction on ``target`` left (call only under :class:`Lock`).

    Where the two-rename fallback was killed between its renames (nothing at ``target``, the
    old folder aside as ``.NAME.old-*``), the old folder is put back; then every leftover is
    removed.
    """
    found = leftovers(target)
    aside = [p for p in found if p.name.startswith(f".{target.name}.old-") and p.is_dir()]
    if not os.path.lexists(target) and len(aside) == 1:
        os.rename(aside[0], target)
        found.remove(aside[0])
        log.warning("restored '%s' from an interrupted replacement", target)
    for path in found:
        log.info("removing %s, left by an interrupted svdtrt run", path)
        remove(path)


class DirectoryTransaction:
    """Stage a new state of folder ``target`` and publish it in one atomic step.

    Use as a context manager: on entry the lock is taken, leftovers of killed runs are
    removed, and :attr:`path` is a fresh, empty staging folder; fill it (the caller links in
    what it keeps of the current state) and call :meth:`publish` to make it visible. Leaving
    the block without publishing (an exception, a return) discards the staged folder and
    leaves ``target`` as it was.

    Args:
        target: the folder to create or replace.
        kind: what the folder is (:class:`FolderKind`): only a folder of that kind is replaced,
            and only with ``force``; an empty folder is written into as if nothing were there.
        force: replace a folder of ``kind`` at ``target``.
        expect_existing: True for an update of an existing ``target``, False to create one.
            Without ``force``, publishing refuses to replace something at ``target`` that the
            caller did not expect, or to create what disappeared.
    Raises:
        InputError: the parent folder is missing or read-only; something that is not a folder of
            ``kind`` is at ``target`` (even with ``force``); or ``target`` is taken (or was taken
            meanwhile) where the caller expected nothing and ``force`` is false.
    """

    def __init__(self, target: str | os.PathLike, kind: FolderKind, force: bool = False,
                 expect_existing: bool = False):
        self.target = Path(target)
        self.kind, self.force, self.expect_existing = kind, force, expect_existing
        self.lock = Lock(self.target)
        self.path: Path = self.target  # set on entry
        self.published = False

    def __enter__(self) -> DirectoryTransaction:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(os_error_message(self.target, e)) from None
        self.lock.__enter__()
        checkpoint("locked")
        try:
            recover(self.target)
            self._refuse_unexpected()
            self.path = self.target.with_name(f".{self.target.name}.txn-{os.getpid()}-{secrets.token_hex(4)}")
            os.mkdir(self.path, 0o777)
        except OSError as e:
            self._discard()
            self.lock.__exit__()
            raise InputError(os_error_message(self.target, e)) from None
        except BaseException:
            self._discard()
            self.lock.__exit__()
            raise
        return self

    def _refuse_unexpected(self, when: str = "already exists") -> None:
        if self.expect_existing:
            if not os.path.lexists(self.target):
                raise InputError(f"'{self.target}' disappeared while svdtrt was working on it; nothing was written")
            return
        if when == "already exists":
            self.kind.check_target(self.target, self.force)
        elif self.kind.foreign(self.target) or (occupied(self.target) and not self.force):
            raise InputError(f"'{self.target}' appeared while svdtrt was writing it; nothing was replaced")

    def scratch(self, name: str) -> Path:
        """A scratch folder for intermediate files, beside the staged one and removed with it
        (named like it, so a killed run's scratch is a recognised leftover too)."""
        path = self.path.with_name(f"{self.path.name}.{name}")
        os.makedirs(path, exist_ok=True)
        self._scratch = getattr(self, "_scratch", []) + [path]
        return path

    def publish(self) -> None:
        """Make the staged folder the new ``target`` in one atomic step (see the module doc).

        Raises:
            InputError: something appeared at ``target`` meanwhile and ``force`` is false (the
                staged work is discarded; ``target`` is untouched).
        """
        fsync_tree(self.path)
        checkpoint("publish")
        self._refuse_unexpected(when="appeared")
        if os.path.isdir(self.target) and not self.target.is_symlink() and not occupied(self.target):
            try:  # an empty folder: nothing to keep; rmdir fails if something was put in it meanwhile
                os.rmdir(self.target)
            except OSError:
                raise InputError(f"'{self.target}' appeared while svdtrt was writing it; nothing was replaced") \
                    from None
        if not os.path.lexists(self.target):
            try:
                rename_noreplace(self.path, self.target)
            except FileExistsError:
                raise InputError(f"'{self.target}' appeared while svdtrt was writing it; nothing was replaced") \
                    from None
        elif self.target.is_dir() and not self.target.is_symlink() and exchange(self.path, self.target):
            checkpoint("swapped")
            remove(self.path)  # now the old state
        else:  # no RENAME_EXCHANGE here: two renames, undone by recover()
            aside = self.target.with_name(f".{self.target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(self.target, aside)
            os.rename(self.path, self.target)
            remove(aside)
        _fsync_dir(self.target.parent)
        self.published = True
        log.info("published %s", self.target)

    def _discard(self) -> None:
        if self.path != self.target and not self.published:
            remove(self.path)
        for path in getattr(self, "_scratch", []):
            remove(path)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._discard()
        finally:
            self.lock.__exit__()
        if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, IsADirectoryError)):
            raise InputError(os_error_message(self.target, exc)) from None


def write_new(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file at ``path``, replacing (never writing through) any link there."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class OutputFile:
    """One output file (a clip, frames, a report) written in full before it appears.

    Create it before the long work: it checks the target and reserves a locked part file
    beside it (so a read-only or missing folder fails before sampling, not after). Write to
    :attr:`part`, then call :meth:`publish`; :meth:`discard` (or garbage collection of an
    unpublished one at exit) removes the part.

    Args:
        target: the file to write.
        kind: what the file is (:class:`FileKind`): ``force`` replaces only a file of that kind.
        force: replace an existing file of ``kind``.
    Raises:
        InputError: ``target`` is a folder, or anything but a file of ``kind`` (even with
            ``force``), or exists without ``force``; or its folder is missing or not writable.
    """

    def __init__(self, target: str | os.PathLike, kind: FileKind, force: bool = False):
        self.target = Path(target)
        self.kind, self.force = kind, force
        if self.target.is_dir():
            raise InputError(f"'{self.target}' is a folder; give a file name")
        if not self.target.parent.is_dir():
            raise InputError(f"folder '{self.target.parent}' does not exist; create it or choose another path")
        reason = kind.foreign(self.target)
        if reason:
            raise InputError(f"'{self.target}' is {reason}; svdtrt replaces only {kind.what} it wrote, even with "
                             f"--force: choose another path, e.g. '{hints.fresh_path(self.target)}'")
        if os.path.lexists(self.target) and not force:
            raise InputError(f"'{self.target}' already exists; choose another path or pass --force to replace it")
        self._remove_dead_parts()
        suffix = "".join(self.target.suffixes[-1:])  # writers such as PyAV read the format from it
        self.part = self.target.with_name(f".{self.target.stem}.part-{os.getpid()}-{secrets.token_hex(4)}{suffix}")
        try:
            self._fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as e:
            raise InputError(os_error_message(self.target, e)) from None
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # tells other writers this part's writer is alive

    def _part_glob(self) -> str:
        return f".{self.target.stem}.part-*{''.join(self.target.suffixes[-1:])}"

    def _remove_dead_parts(self) -> None:
        for part in self.target.parent.glob(self._part_glob()):
            try:
                fd = os.open(part, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                part.unlink(missing_ok=True)  # its writer is gone
            except (BlockingIOError, OSError):
                pass
            finally:
                os.close(fd)

    def write(self, writer: Callable[[Path], None]) -> None:
        """Run ``writer(part_path)``; a full disk or a write error becomes one InputError line."""
        try:
            writer(self.part)
        except OSError as e:
            self.discard()
            raise InputError(os_error_message(self.target, e)) from None

    def publish(self) -> Path:
        """Make the written part the target; returns the target.

        Raises:
            InputError: something appeared at the target meanwhile (without ``force``, or not a
                file of the kind).
        """
        try:
            fd = os.open(self.part, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            os.chmod(self.part, 0o666 & ~umask())
            if self.force:
                if self.target.is_dir() or self.kind.foreign(self.target):
                    raise FileExistsError(errno.EEXIST, "something else appeared", str(self.target))
                os.replace(self.part, self.target)
            else:
                rename_noreplace(self.part, self.target)
        except FileExistsError:
            self.discard()
            raise InputError(f"'{self.target}' appeared while svdtrt was writing it; nothing was replaced") from None
        except OSError as e:
            self.discard()
            raise InputError(os_error_message(self.target, e)) from None
        _fsync_dir(self.target.parent)
        self._close()
        log.info("wrote %s (%d bytes)", self.target, self.target.stat().st_size)
        return self.target

    def discard(self) -> None:
        """Remove the part file (nothing is published)."""
        remove(self.part)
        self._close()

    def _close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            self.discard()


class Journal:
    """A journal of finished work: one JSON record per line, each appended whole (``batch``'s
    ``clips.jsonl``, ``tune``'s ``candidates.jsonl``).

    Call only under the writer's :class:`Lock` (one writer at a time): :meth:`repair` cuts off a
    partial last line a killed writer left, :meth:`append` writes a line with one ``write`` to an
    ``O_APPEND`` file and fsyncs it, so a kill at any instant leaves whole lines only, after repair.
    """

    def __init__(self, path: Path, owner: str = "svdtrt"):
        self.path = Path(path)
        self.owner = owner  # the command that keeps it, for messages

    def check(self) -> None:
        """Raise :class:`~svdtrt.errors.InputError` unless the journal is a regular file or not there yet."""
        if os.path.lexists(self.path) and (self.path.is_symlink() or not self.path.is_file()):
            raise InputError(f"'{self.path}' is {path_kind(self.path)}, where {self.owner} keeps its journal "
                             f"({self.path.name}); move it away or choose another --out")

    def repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
            log.warning("cut off a partial last line of %s, left by an interrupted run", self.path)

    def append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a full disk: leave no partial line behind
                os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise OSError(28, "No space left on device")
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> list[dict]:
        """The journal's records, in order (a line that is not a JSON object, from an edit by
        hand, is left out)."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return [r for r in records if isinstance(r, dict)]
