import os

import pytest

from harness.io import write_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_users_umask(tmp_path, umask, mode):
    """A results folder shared between users needs group/other read where the umask allows it."""
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "record.json", {"status": "ok"})
    finally:
        os.umask(previous)
    assert (tmp_path / "record.json").stat().st_mode & 0o777 == mode
