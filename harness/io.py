"""Atomic writes and file hashing: a crash never leaves a half-written record or cache entry."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")  # image files the tasks read from dataset folders


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(file)`` into a temporary sibling, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a shared results folder needs the user's umask
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
