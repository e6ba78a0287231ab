"""The filesystem layer: locks, staged writes and atomic publishing, used by every writer
(docs/architecture.md, "Transactions").

Two mechanisms, one rule (an output appears complete or not at all, and never over something
that is not ours without ``force``):

- :class:`DirectoryTransaction`: a bundle (or the demo's folder) changes as a whole. Under an
  exclusive lock on ``.NAME.lock`` beside it, the new state is staged in a sibling folder
  ``.NAME.txn-<id>`` (files carried over unchanged are hard-linked in just before publishing,
  so staging costs no copy; writers only ever create new files, never write through a link),
  and is published in one atomic step:
  ``renameat2(RENAME_EXCHANGE)`` swaps it with the old folder, or ``RENAME_NOREPLACE`` puts a
  new one where nothing is. A kill at any instant leaves the old folder or the new one; the
  staged or swapped-out folder left behind is removed by the next command that takes the lock.
- :class:`OutputFile`: a clip, frames or report is written to ``.NAME.part-<id>SUFFIX`` beside
  its target while that file is flock-ed, and linked to the target (``link`` fails if anything
  appeared there meanwhile) or, with ``force``, renamed over it. Parts whose writer died (their
  flock is free) are removed by the next writer of the same target.

Nothing here knows what a bundle holds; :mod:`svdtrt.bundle.store` builds on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import sys
from pathlib import Path
from typing import Callable

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
    ``"a file"``, ``"a broken link"``, ``"not a file or folder"`` or ``"not found"``."""
    path = Path(path)
    if path.is_dir():
        return "a folder"
    if path.is_file():
        return "a file"
    if path.is_symlink():
        return "a broken link"
    return "not a file or folder" if os.path.lexists(path) else "not found"


def os_error_message(path: Path, e: OSError) -> str:
    """One line for an OSError met while writing ``path`` (full disk, read-only, permissions)."""
    if e.errno == errno.ENOSPC:
        return f"the disk is full while writing '{path}'; free space and run the command again"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write '{path}': {e.strerror} (choose a writable location)"
    return f"cannot write '{path}': {e.strerror or e}"


class Lock:
    """An exclusive advisory lock (``flock``) on ``.NAME.lock`` beside ``target``.

    The lock file stays (removing a lock file races with its next taker); the lock itself
    is released when the holder exits, however it exits. A second taker waits, saying so once.

    Raises:
        InputError: the folder of ``target`` does not exist or cannot be written.
    """

    def __init__(self, target: Path, purpose: str = "change"):
        self.target = Path(target)
        self.path = self.target.with_name(f".{self.target.name}.lock")
        self.purpose = purpose
        self._fd: int | None = None

    def __enter__(self) -> "Lock":
        if not self.target.parent.is_dir():
            raise InputError(f"folder '{self.target.parent}' does not exist; create it or choose another path")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise InputError(os_error_message(self.target, e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            print(f"svdtrt: waiting for another svdtrt process (pid {holder}) to finish with '{self.target}'",
                  file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
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
        force: replace whatever is at ``target`` (a folder that is not ours included).
        expect_existing: True for an update of an existing ``target``, False to create one.
            Without ``force``, publishing refuses to replace something at ``target`` that the
            caller did not expect, or to create what disappeared.
    Raises:
        InputError: the parent folder is missing or read-only, or ``target`` exists (or
            appeared) where the caller expected nothing and ``force`` is false.
    """

    def __init__(self, target: str | os.PathLike, force: bool = False, expect_existing: bool = False):
        self.target = Path(target)
        self.force, self.expect_existing = force, expect_existing
        self.lock = Lock(self.target)
        self.path: Path = self.target  # set on entry
        self.published = False

    def __enter__(self) -> "DirectoryTransaction":
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
        exists = os.path.lexists(self.target)
        if exists and not self.expect_existing and not self.force:
            if when != "already exists":
                raise InputError(f"'{self.target}' appeared while svdtrt was writing it; nothing was replaced "
                                 "(pass --force to replace it)")
            raise InputError(f"'{self.target}' already exists; choose another path or pass --force to replace it")
        if not exists and self.expect_existing:
            raise InputError(f"'{self.target}' disappeared while svdtrt was working on it; nothing was written")

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
        if not os.path.lexists(self.target):
            try:
                rename_noreplace(self.path, self.target)
            except FileExistsError:
                raise InputError(f"'{self.target}' appeared while svdtrt was writing it; nothing was replaced "
                                 "(pass --force to replace it)") from None
        elif self.target.is_dir() and not self.target.is_symlink() and exchange(self.path, self.target):
            checkpoint("swapped")
            remove(self.path)  # now the old state
        else:  # no RENAME_EXCHANGE here (or a file is in the way): two renames, undone by recover()
            aside = self.target.with_name(f".{self.target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(self.target, aside)
            os.rename(self.path, self.target)
            remove(aside)
        _fsync_dir(self.target.parent)
        self.published = True

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
        force: replace an existing file (never a folder).
    Raises:
        InputError: ``target`` exists without ``force``, is a folder, or its folder is missing
            or not writable.
    """

    def __init__(self, target: str | os.PathLike, force: bool = False):
        self.target = Path(target)
        self.force = force
        if self.target.is_dir():
            raise InputError(f"'{self.target}' is a folder; give a file name")
        if not self.target.parent.is_dir():
            raise InputError(f"folder '{self.target.parent}' does not exist; create it or choose another path")
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
            InputError: something appeared at the target meanwhile and ``force`` is false.
        """
        try:
            fd = os.open(self.part, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            os.chmod(self.part, 0o666 & ~umask())
            if self.force:
                if self.target.is_dir():
                    raise InputError(f"'{self.target}' is a folder; give a file name")
                os.replace(self.part, self.target)
            else:
                rename_noreplace(self.part, self.target)
        except FileExistsError:
            self.discard()
            raise InputError(f"'{self.target}' appeared while svdtrt was writing it; nothing was replaced "
                             "(pass --force to replace it)") from None
        except OSError as e:
            self.discard()
            raise InputError(os_error_message(self.target, e)) from None
        _fsync_dir(self.target.parent)
        self._close()
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

    def __init__(self, path: Path):
        self.path = Path(path)

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
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
