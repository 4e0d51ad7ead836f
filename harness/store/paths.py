"""Where the harness keeps things that outlive a run: the user cache (trained miniatures, evaluation caches)."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from harness.errors import HarnessError, os_error_message

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding harness/, methods/, tasks/ and reports/
CACHE_VARIABLE = "DFQ_HARNESS_CACHE"


def cache_dir() -> Path:
    """``$DFQ_HARNESS_CACHE``, else ``~/.cache/dfq_harness`` (never inside the repository)."""
    root = os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "dfq_harness"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_cache_dir() -> Path:
    """The cache folder, created and writable, or one HarnessError naming the variable that chose it.

    Checked before the grid: an unwritable cache, or one under a file, would otherwise fail every
    cell that builds an evaluation cache or trains a miniature.
    """
    chosen = os.environ.get(CACHE_VARIABLE)
    subject = f"{CACHE_VARIABLE} {chosen}" if chosen else f"cache folder {Path.home() / '.cache' / 'dfq_harness'}"
    try:
        path = cache_dir()
    except OSError as error:
        raise HarnessError(os_error_message(error, subject)) from None
    check_writable_folder(path, subject)
    return path


def check_writable_folder(folder: Path, subject: str) -> None:
    """``folder`` exists (created if need be) and a file can be made in it; else one HarnessError
    ``SUBJECT: what is wrong; what is accepted``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe."):
            pass
    except FileExistsError as error:  # mkdir met a file where a folder belongs: say so, not "File exists"
        raise HarnessError(os_error_message(NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                                               error.filename), subject)) from None
    except OSError as error:
        raise HarnessError(os_error_message(error, subject)) from None
