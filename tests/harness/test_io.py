import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.entry.cli import main
from harness.store.io import ABANDONED_AFTER_S, atomic_save, interrupted_writes, remove_interrupted_writes, write_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_users_umask(tmp_path, umask, mode):
    """A results folder shared between users needs group/other read where the umask allows it."""
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "record.json", {"status": "ok"})
    finally:
        os.umask(previous)
    assert (tmp_path / "record.json").stat().st_mode & 0o777 == mode


# --- leftovers of interrupted writes: removed at the next run, never a live writer's or a user's file ---

REPO = Path(__file__).resolve().parents[2]
CELL = ["--methods", "noise", "--tasks", "digits", "--models", "digits_vit_seed0", "--seeds", "0", "--limit", "20",
        "--bits", "fp", "--no-progress", "--no-report"]
WRITER = """
import os, sys, time
from pathlib import Path
from harness.store.io import atomic_save, atomic_write

def write(handle):
    handle.write(b"half a record")
    handle.flush()
    os._exit(9) if sys.argv[2] == "die" else time.sleep(300)

path = Path(sys.argv[1])
if path.suffix == ".onnx":
    atomic_save(path, lambda temporary: write(open(temporary, "wb")))
else:
    atomic_write(path, write)
"""


def _writer(path: Path, then: str) -> subprocess.Popen:
    """Another process writing ``path`` through the harness's writers: killed mid-write (``die``) or
    still writing (``live``) when this returns."""
    before = set(path.parent.iterdir()) if path.parent.is_dir() else set()
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path), then], cwd=REPO)
    if then == "die":
        assert process.wait(timeout=60) == 9
    deadline = time.monotonic() + 60
    while not (path.parent.is_dir() and set(path.parent.iterdir()) - before):
        assert time.monotonic() < deadline and process.poll() is None, "the writer made no temporary file"
        time.sleep(0.05)
    return process


def _hidden(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_an_interrupted_writes_leftover_is_removed_at_the_next_run_and_a_live_writers_is_not(tmp_path, monkeypatch,
                                                                                                capsys):
    results, cache = tmp_path / "results", tmp_path / "cache"
    monkeypatch.setenv("DFQ_HARNESS_CACHE", str(cache))
    _writer(results / "records" / "0123456789abcdef.json", "die")
    _writer(results / "fp" / "digits.json", "die")
    _writer(cache / "imagenet_eval" / "key" / "meta.json", "die")
    _writer(tmp_path / "exports" / "model.onnx", "die")  # outside both folders: not the run's to clean
    (leftover_record,) = _hidden(results / "records")
    assert re.fullmatch(r"\.0123456789abcdef\.json\.[A-Za-z0-9-]+\.\d+\.[a-z0-9_]{8}\.tmp", leftover_record)
    assert re.fullmatch(r"\.model\.onnx\.[A-Za-z0-9-]+\.\d+\.[a-z0-9_]{8}\.tmp\.onnx", _hidden(tmp_path / "exports")[0])
    live = _writer(results / "records" / "fedcba9876543210.json", "live")
    try:
        (live_file,) = set(_hidden(results / "records")) - {leftover_record}
        mine = [".notes.tmp", ".0123456789abcdef.json.tmp", "0123456789abcdef.json.abcd1234.tmp",
                ".0123456789abcdef.json.abcd1234.tmp.bak.old", ".draft.json.myhost.12.abcd1234.temp"]
        for name in mine:  # similar names, older than any writer's: still not the harness's
            (results / "records" / name).write_text("the user's own")
            os.utime(results / "records" / name, (time.time() - 2 * ABANDONED_AFTER_S,) * 2)
        capsys.readouterr()

        assert main(["run", *CELL, "--results", str(results)]) == 0
        err = capsys.readouterr().err.splitlines()
        assert err == [f"removed 3 temporary file(s) left by interrupted writes in {results} and {cache}"]
        assert _hidden(results / "records") == sorted([live_file, *[name for name in mine if name.startswith(".")]])
        assert _hidden(results / "fp") == [] and _hidden(cache / "imagenet_eval" / "key") == []
        assert len(_hidden(tmp_path / "exports")) == 1
        assert live.poll() is None  # still writing, its file untouched
    finally:
        live.kill()
        live.wait()
    assert main(["run", *CELL, "--results", str(results)]) == 0  # killed now: its leftover goes at the next run
    assert capsys.readouterr().err.splitlines() == [
        f"removed 1 temporary file(s) left by interrupted writes in {results} and {cache}"]
    assert live_file not in _hidden(results / "records")
    assert main(["run", *CELL, "--results", str(results)]) == 0  # nothing left: nothing said
    assert "removed" not in capsys.readouterr().err


def test_leftovers_of_other_hosts_and_older_names_go_only_after_a_day(tmp_path):
    """Whether another machine's writer still runs cannot be asked: a day unchanged is the sign it is gone."""
    day = ABANDONED_AFTER_S
    names = {".r.json.otherhost-1.4242.abcd1234.tmp": day - 60, ".s.json.otherhost-1.4242.abcd1234.tmp": day + 60,
             ".t.json.abcd1234.tmp": day - 60, ".u.json.abcd1234.tmp": day + 60,  # written before names carried a pid
             ".m.onnx.otherhost.7.x_y0z9ab.tmp.onnx": day + 60}
    now = time.time()
    for name, age in names.items():
        (tmp_path / "cache" / "deep").mkdir(parents=True, exist_ok=True)
        path = tmp_path / "cache" / "deep" / name
        path.write_text("x")
        os.utime(path, (now - age, now - age))
    (tmp_path / "target").write_text("a user's file")
    (tmp_path / "cache" / ".v.json.abcd1234.tmp").symlink_to(tmp_path / "target")  # a link is no writer's file
    os.utime(tmp_path / "cache" / ".v.json.abcd1234.tmp", (now - 2 * day, now - 2 * day), follow_symlinks=False)
    (tmp_path / "cache" / ".w.json.abcd1234.tmp").mkdir()

    assert sorted(path.name for path in interrupted_writes(tmp_path / "cache", now=now)) == [
        ".m.onnx.otherhost.7.x_y0z9ab.tmp.onnx", ".s.json.otherhost-1.4242.abcd1234.tmp", ".u.json.abcd1234.tmp"]
    assert remove_interrupted_writes(tmp_path / "cache", tmp_path / "absent") == 3
    assert sorted(path.name for path in (tmp_path / "cache" / "deep").iterdir()) == [
        ".r.json.otherhost-1.4242.abcd1234.tmp", ".t.json.abcd1234.tmp"]
    assert (tmp_path / "target").read_text() == "a user's file" and (tmp_path / "cache" / ".w.json.abcd1234.tmp").is_dir()


def test_a_finished_write_leaves_no_temporary_file(tmp_path):
    write_json(tmp_path / "record.json", {"status": "ok"})
    atomic_save(tmp_path / "model.onnx", lambda temporary: temporary.write_bytes(b"model"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx", "record.json"]
