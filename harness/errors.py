"""The harness's own error type: a one-line message a user can act on."""
from __future__ import annotations

import errno
import os

# what each operating-system refusal asks of the user: the second half of ``error: PATH: WHAT; ACCEPTED``
_ACCEPTED = {
    errno.ENOSPC: "free space on that file system, or point the harness at a folder on another one",
    errno.EDQUOT: "free space within your quota, or point the harness at a folder on another file system",
    errno.EROFS: "a folder on a writable file system",
    errno.EACCES: "a path this user may read and write",
    errno.EPERM: "a path this user may read and write",
    errno.EISDIR: "the path of a file, not of a folder",
    errno.ENOTDIR: "a path whose every parent is a folder, not a file",
    errno.ENOENT: "a path that exists or can be created",
    errno.EEXIST: "a path where nothing of another kind stands",
}


class HarnessError(Exception):
    """Bad input or a missing resource; the CLI prints the message alone and exits with code 2."""


def os_error_message(error: OSError, subject: str | None = None) -> str:
    """``SUBJECT: what is wrong; what is accepted`` for an operating-system refusal.

    ``subject`` names what the user set (``DFQ_HARNESS_CACHE /x``, ``results folder R``); without it the
    path the system call failed on. One wording for the up-front checks and for the CLI's last resort, so
    a full disk reads the same wherever it is met (issue 31).
    """
    where = subject or (str(error.filename) if error.filename is not None else "a file of the harness")
    what = error.strerror or (os.strerror(error.errno) if error.errno else type(error).__name__)
    if subject and error.filename is not None and str(error.filename) not in subject:
        what = f"{what} ({error.filename})"
    return f"{where}: {what}; accepted: {_ACCEPTED.get(error.errno, 'a path this user may read and write')}"


def error_line(error: BaseException) -> str:
    """An exception as one line: a HarnessError's message as it is, any other prefixed with its type."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if isinstance(error, HarnessError) else f"{type(error).__name__}: {text}"
