"""Atomic writes and file hashing: a crash never leaves a half-written record or cache entry."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")  # image files the tasks read from dataset folders


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(file)`` into a temporary sibling, fsync, then rename over ``path``."""
    fd, tmp = _temporary_sibling(path)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save(path: Path, save: Callable[[Path], None], overwrite: bool = False) -> None:
    """For writers that want a path, not a handle (an ONNX program's ``save``): ``save(temporary)`` into
    a sibling of ``path``, then move it into place, the temporary file removed on any failure.

    Without ``overwrite`` the file is hard-linked into place, which fails rather than replaces a file
    that appeared since the caller looked (FileExistsError): a file it did not create is never lost.
    """
    fd, tmp = _temporary_sibling(path, suffix=f".tmp{path.suffix}")  # a writer may pick its format by suffix
    os.close(fd)
    try:
        save(Path(tmp))
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _temporary_sibling(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A hidden temporary file beside ``path`` (a rename never crosses file systems), with the user's umask
    (mkstemp makes 0600; a shared results folder needs group access). Its name says which process writes
    it (``.NAME.HOST.PID.XXXXXXXX.tmp``), so that what an interrupted write leaves is known as such and
    removed at the next run (:func:`remove_interrupted_writes`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_writer_host()}.{os.getpid()}.", suffix=suffix)
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


# What _temporary_sibling names, and only that: mkstemp's eight random characters between the writer's
# host and pid and ``.tmp`` (``.tmp.onnx`` for atomic_save). A user's ``.notes.tmp`` does not match.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]+)\.[a-z0-9_]{8}\.tmp(?:\.[^.]*)?$")
# The same writers before their names carried host and pid: ``.NAME.XXXXXXXX.tmp``.
_UNMARKED_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp(?:\.[^.]*)?$")
ABANDONED_AFTER_S = 24 * 3600  # no atomic write of the harness takes a day: its writer is gone


def _writer_host() -> str:
    """This machine, as far as process ids mean anything: its host name (a shared results folder is seen
    from several), and its pid namespace where there is one (containers may share a host name)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    with contextlib.suppress(OSError):
        host += "-" + re.sub(r"[^0-9]", "", os.readlink("/proc/self/ns/pid"))
    return host


def _writer_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        return False
    return False


def interrupted_writes(folder: Path, now: float | None = None) -> Iterator[Path]:
    """Temporary files under ``folder`` that a write of this harness began and will never finish.

    Decided: such a file is the writer's own (its name matches what :func:`_temporary_sibling` makes,
    nothing else: a user's ``.notes.tmp`` never does) and its writer is known to be gone: a writer on
    this host whose process no longer exists (host and pid are in the name), or any writer whose file
    has not changed for :data:`ABANDONED_AFTER_S` (the only sign there is for a writer on another host
    of a shared folder, or for a name from before names carried a pid; no atomic write of the harness
    takes a day). So a run never removes the file of a write in progress in another process or on
    another machine, and a pid reused since the crash only delays the clean-up by a day.
    """
    host, now = _writer_host(), time.time() if now is None else now
    for directory, subdirectories, names in os.walk(folder):
        subdirectories[:] = [name for name in subdirectories if not os.path.islink(os.path.join(directory, name))]
        for name in names:
            marked, unmarked = _TEMPORARY.match(name), _UNMARKED_TEMPORARY.match(name)
            if not (marked or unmarked):
                continue
            path = Path(directory, name)
            try:
                status = path.lstat()
            except OSError:
                continue
            if not stat.S_ISREG(status.st_mode):
                continue
            gone = marked is not None and marked["host"] == host and _writer_gone(int(marked["pid"]))
            if gone or now - status.st_mtime > ABANDONED_AFTER_S:
                yield path


def remove_interrupted_writes(*folders: Path) -> int:
    """Remove :func:`interrupted_writes` under each folder that exists; returns how many were removed.
    A file that cannot be removed (a read-only folder) is left for the checks that name such folders."""
    removed = 0
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for path in list(interrupted_writes(Path(folder))):
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
                path.unlink()
                removed += 1
    return removed


def clean_interrupted_writes(results: Path) -> int:
    """At the start of ``run``: remove what interrupted writes left in the results folder and the cache
    folder (:func:`interrupted_writes`), saying how many in one line on stderr. A cache folder that cannot
    be made is left to the check before the grid (harness.store.paths.check_cache_dir), which names it."""
    from harness.store.paths import cache_dir

    folders = [Path(results)]
    with contextlib.suppress(OSError):
        folders.append(cache_dir())
    removed = remove_interrupted_writes(*folders)
    if removed:
        print(f"removed {removed} temporary file(s) left by interrupted writes in {' and '.join(map(str, folders))}",
              file=sys.stderr)
    return removed


@contextlib.contextmanager
def replaced_folder(folder: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``folder`` to fill; when the block ends normally the sibling
    takes the folder's place whole, otherwise it is removed and the folder stays as it was.

    A reader sees either the old folder complete or the new one (a report never half new, issue 31).
    The swap is two renames with SIGINT and SIGTERM held back between them; what a harder end (SIGKILL,
    power) leaves behind is put right at the next call, under a lock so that concurrent writers never
    remove each other's work.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.parent / f".{folder.name}.lock"):
        _remove_leftovers(folder)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".new"))
        try:
            staging.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700
            yield staging
            _swap_in(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _previous(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def _swap_in(staging: Path, folder: Path) -> None:
    previous = _previous(folder)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if folder.exists():
            os.rename(folder, previous)
        os.rename(staging, folder)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a signal held back is delivered here
    shutil.rmtree(previous, ignore_errors=True)


def _remove_leftovers(folder: Path) -> None:
    """An earlier call ended between its two renames: its old folder goes back; unfinished fillings go."""
    previous = _previous(folder)
    if previous.is_dir() and not folder.exists():
        os.rename(previous, folder)
    shutil.rmtree(previous, ignore_errors=True)
    for staging in folder.parent.glob(f".{glob.escape(folder.name)}.*.new"):
        shutil.rmtree(staging, ignore_errors=True)


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=True), mode="w")


def file_sha256(path: Path, length: int = 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def config_hash(config: dict, length: int = 16) -> str:
    """Stable hash of a JSON-serializable config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True, holder: str = "",
              on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Exclusive advisory lock; yields whether it was acquired (always True when blocking).

    The kernel drops the lock when its process dies, even by SIGKILL, so a crashed runner never
    leaves a stale lock behind. ``holder`` is written into the file for whoever wonders who holds it;
    a blocking caller that has to wait is first told that holder through ``on_wait``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not blocking:
                yield False
                return
            if on_wait is not None:
                handle.seek(0)
                on_wait(handle.read().strip() or "another process")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if holder:
                handle.truncate(0)
                handle.write(holder)
                handle.flush()
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
