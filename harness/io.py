"""Atomic writes and file hashing: a crash never leaves a half-written record or cache entry."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import tempfile
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
    (mkstemp makes 0600; a shared results folder needs group access)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


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
