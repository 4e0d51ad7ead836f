"""Isolated workers end with their runner; a runner waiting on a lock says what it waits for."""
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.run.grid import GridSpec, expand
from harness.run.runner import GridRunner
from harness.store.io import file_lock

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc (Linux)")
def test_sigterm_to_the_runner_ends_its_isolated_worker(tmp_path):
    command = [sys.executable, "-m", "harness", "run", "--methods", "psaq", "--models", "digits_vit_seed0",
               "--bits", "w4a8", "--gen-opt", "iterations=100000", "--gen-opt", "warmup=0", "--executor", "isolated",
               "--results", str(tmp_path), "--no-progress", "--no-report"]
    runner = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        worker = None
        deadline = time.monotonic() + 120
        while worker is None and time.monotonic() < deadline:
            worker = next((c for c in _children(runner.pid) if "spawn_main" in _cmdline(c)), None)
            time.sleep(0.2)
        assert worker is not None, "no isolated worker started"
        time.sleep(3)  # let it import and take the cell's lock
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), "the worker outlived its runner"
    finally:
        if runner.poll() is None:
            runner.kill()


def test_a_blocked_lock_names_its_holder(tmp_path):
    path = tmp_path / "cell.lock"
    told, order = [], []
    with file_lock(path, holder="host pid 1234"):
        waiter = threading.Thread(target=lambda: _take(path, told, order))
        waiter.start()
        time.sleep(0.5)
        order.append("released")
    waiter.join(timeout=10)
    assert told == ["host pid 1234"] and order == ["released", "acquired"]


def _take(path, told, order):
    with file_lock(path, holder="me", on_wait=told.append):
        order.append("acquired")


def test_the_runner_says_which_cell_it_waits_for(tmp_path, capsys):
    runner = GridRunner(tmp_path)
    (cell,) = expand(GridSpec(methods=("noise",), models=("digits_vit_seed0",), bits=("w4a8",), limit=20))
    cell_id = runner.worker.keys(cell).cell_id
    with file_lock(runner.store.lock_path(cell_id), holder="otherhost pid 42"):
        worker = threading.Thread(target=runner.worker.settle, args=(cell,))
        worker.start()
        time.sleep(1)
    worker.join(timeout=120)
    err = capsys.readouterr().err
    assert f"waiting for cell {cell_id} (noise digits_vit_seed0 w4a8 seed 0): otherhost pid 42 holds its lock" in err
    assert runner.store.finished(cell_id) is not None


def test_run_out_still_works_and_says_it_is_now_results(tmp_path, capsys):
    from harness.entry.cli import main

    argv = ["run", "--methods", "noise", "--models", "digits_vit_seed0", "--bits", "w4a8", "--limit", "20",
            "--no-progress", "--no-report"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert "warning: `run --out` is now `run --results`" in capsys.readouterr().err
    assert main([*argv, "--results", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "0 cells computed, 1 already finished" in captured.out and captured.err == ""
    assert main([*argv, "--results", str(tmp_path), "--out", str(tmp_path / "other")]) == 2


def test_isolated_workers_follow_no_progress(tmp_path):
    command = [sys.executable, "-m", "harness", "run", "--methods", "noise", "--models", "digits_vit_seed0",
               "--bits", "w4a8", "--limit", "64", "--executor", "isolated", "--results", str(tmp_path), "--no-report"]
    shown = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    hidden = subprocess.run([*command, "--no-progress", "--force"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert shown.returncode == hidden.returncode == 0
    assert "it/s]" in shown.stderr or "s/it]" in shown.stderr  # the worker's evaluation bar
    assert "it/s]" not in hidden.stderr and "s/it]" not in hidden.stderr, hidden.stderr
