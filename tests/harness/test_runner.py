import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.plugin.method import CalibrationSet, Generator, MethodSpec
from harness.plugin.registry import GENERATORS, METHODS
from harness.run.grid import GridSpec
from harness.run.runner import GridRunner
from harness.store.calibration_cache import read_calibration
from harness.store.code_version import plugin_code
from harness.store.records import ResultStore

REPO = Path(__file__).resolve().parents[2]
RECORD_FIELDS = {"cell_id", "method", "generator", "calibrator", "task", "model", "bits", "seed", "options",
                 "metrics", "fp_metrics", "timing_s", "memory", "num_calibration_images", "versions",
                 "harness_commit", "date", "status", "weights_id", "code", "kernels"}


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))}


def test_grid_writes_complete_records_and_reuses_calibration_sets(tmp_path):
    spec = GridSpec(methods=("real",), bits=("w8a8", "w4a4", "fp"), models=("digits_vit_seed0",), limit=100)
    summary = GridRunner(tmp_path).run(spec)
    assert (summary.computed, summary.skipped, summary.failed) == (3, 0, 0)
    records = _records(tmp_path)
    assert len(records) == 3
    for cell_id, record in records.items():
        assert RECORD_FIELDS <= set(record) and record["cell_id"] == cell_id and record["status"] == "ok"
        assert 0 <= record["metrics"]["top1"] <= 100
    by_bits = {r["bits"]: r for r in records.values()}
    assert by_bits["fp"]["metrics"] == by_bits["fp"]["fp_metrics"]
    # the kernels the values came from (docs/results.md, Kernels)
    kernels = by_bits["w8a8"]["kernels"]
    assert (kernels["device"], kernels["torch"], kernels["torch_cpu"]) == (
        "cpu", torch.__version__, torch.backends.cpu.get_cpu_capability())
    assert by_bits["w8a8"]["options"]["quant"]["profile"] == "standard"
    assert by_bits["w8a8"]["num_calibration_images"] == 32
    # the real images are drawn once for the (model, seed) and reused by the second bit width
    assert sorted([by_bits["w4a4"]["generator_cache_hit"], by_bits["w8a8"]["generator_cache_hit"]]) == [False, True]
    assert len(list((tmp_path / "cache" / "generators" / "real").glob("*.safetensors"))) == 1
    assert len(list((tmp_path / "fp").glob("*.json"))) == 1

    again = GridRunner(tmp_path).run(spec)
    assert (again.computed, again.skipped) == (0, 3)
    assert _records(tmp_path) == records
    forced = GridRunner(tmp_path, force=True).run(spec)
    assert forced.computed == 3


def test_cell_identity_ignores_execution_settings_but_not_options(tmp_path):
    base = GridSpec(methods=("noise",), bits=("w4a4",), models=("digits_vit_seed0",), limit=50)
    GridRunner(tmp_path).run(base)
    batch = GridSpec(methods=("noise",), bits=("w4a4",), models=("digits_vit_seed0",), limit=50,
                     task_options={"batch_size": 5})
    assert GridRunner(tmp_path).run(batch).skipped == 1
    more_images = GridSpec(methods=("noise",), bits=("w4a4",), models=("digits_vit_seed0",), limit=50,
                           generator_options={"num_images": 8})
    summary = GridRunner(tmp_path).run(more_images)
    assert summary.computed == 1 and summary.records[0]["num_calibration_images"] == 8
    labels = {record["options"]["generator"]["num_images"]: record["label"] for record in _records(tmp_path).values()}
    assert labels == {32: "noise", 8: "noise {num_images=8}"}  # a leaderboard row per option setting


class _FailingGenerator(Generator):
    """Raises, to check that one bad cell becomes an error record."""

    def generate(self, context):
        raise RuntimeError("synthetic failure")


@pytest.fixture
def failing_method():
    GENERATORS.add("test_failing", _FailingGenerator)
    METHODS.add("test_failing", MethodSpec(generator="test_failing", calibrator="minmax"))
    yield "test_failing"
    GENERATORS._entries.pop("test_failing")
    METHODS._entries.pop("test_failing")


def test_failing_cell_becomes_error_record_and_grid_goes_on(tmp_path, failing_method):
    spec = GridSpec(methods=(failing_method, "noise"), bits=("w4a4",), models=("digits_vit_seed0",), limit=50)
    summary = GridRunner(tmp_path).run(spec)
    assert (summary.computed, summary.failed) == (2, 1)
    by_method = {r["method"]: r for r in _records(tmp_path).values()}
    assert by_method["test_failing"]["status"] == "error"
    assert by_method["test_failing"]["error"] == "RuntimeError: synthetic failure"
    assert by_method["noise"]["status"] == "ok"
    # an error cell is not a finished result: the next run tries it again, the ok cell is kept
    assert GridRunner(tmp_path).run(spec).computed == 1


def test_torn_record_is_recomputed(tmp_path):
    spec = GridSpec(methods=("noise",), bits=("w4a4",), models=("digits_vit_seed0",), limit=50)
    GridRunner(tmp_path).run(spec)
    path = next((tmp_path / "records").glob("*.json"))
    path.write_text(path.read_text()[:40])
    summary = GridRunner(tmp_path).run(spec)
    assert summary.computed == 1 and json.loads(path.read_text())["status"] == "ok"


def _run_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "harness", "run", "--methods", "real,noise", "--bits", "w8a8,w4a4,w4a3",
            "--seeds", "0", "--limit", "100", "--results", str(out), "--no-progress"]


def test_sigkill_mid_grid_then_resume_loses_and_redoes_nothing(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # subprocess timeouts are generous: a 2-core machine under load (generic kernels, eager quantizers) was
    # measured past 600 s for the reference grid
    reference = tmp_path / "reference"
    subprocess.run(_run_command(reference), check=True, capture_output=True, env=env, cwd=REPO, timeout=1500)
    interrupted = tmp_path / "interrupted"
    finished_before: dict[str, str] = {}
    for kill_after in (3, 7):  # two kills at different points of the grid (12 cells)
        process = subprocess.Popen(_run_command(interrupted), env=env, cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and len(list((interrupted / "records").glob("*.json"))) < kill_after:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        current = {p.stem: p.read_text() for p in (interrupted / "records").glob("*.json")}
        assert all(current[k] == v for k, v in finished_before.items())  # nothing finished was redone
        finished_before = current
    result = subprocess.run(_run_command(interrupted), check=True, capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=1500)
    assert f"{len(finished_before)} already finished" in result.stdout
    final = _records(interrupted)
    assert all(json.dumps(final[k], sort_keys=True) == json.dumps(json.loads(v), sort_keys=True)
               for k, v in finished_before.items())
    expected = _records(reference)
    assert set(final) == set(expected) and len(final) == 12
    assert {k: r["metrics"] for k, r in final.items()} == {k: r["metrics"] for k, r in expected.items()}
    assert not list((interrupted / "records").glob(".*.tmp"))


def test_calibration_cache_entry_holds_the_images(tmp_path):
    spec = GridSpec(methods=("noise",), bits=("w4a4",), models=("digits_vit_seed0",), limit=50)
    GridRunner(tmp_path).run(spec)
    (entry,) = ResultStore(tmp_path).calibration_entries()
    assert entry.calibration.images.shape == (32, 1, 16, 16) and entry.meta["seed"] == 0
    assert entry.meta["code"]["generator"] == plugin_code(GENERATORS.get("noise")).as_dict()


def test_two_concurrent_runners_compute_each_cell_once(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "harness", "run", "--methods", "real,noise", "--bits", "w8a8,w4a4",
               "--seeds", "0,1", "--limit", "100", "--results", str(tmp_path), "--no-progress"]
    runners = [subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True) for _ in range(2)]
    outputs = [runner.communicate(timeout=1500)[0] for runner in runners]
    assert all(runner.returncode == 0 for runner in runners)
    computed = [int(out.split(" cells computed")[0].split()[-1]) for out in outputs]
    records = _records(tmp_path)
    assert len(records) == 16 and sum(computed) == 16
    by_pid = {}
    for record in records.values():
        assert record["status"] == "ok"
        by_pid[record["pid"]] = by_pid.get(record["pid"], 0) + 1
    assert sorted(by_pid.values()) == sorted(c for c in computed if c)
    assert all(f"{16 - c} already finished" in out for c, out in zip(computed, outputs))
    # each calibration set was generated by one runner only: one cache entry per (generator, model, seed)
    assert len(list((tmp_path / "cache" / "generators").glob("*/*.safetensors"))) == 2 * 2 * 2


class _NaNGenerator(Generator):
    """Returns NaN images, to check they never reach a calibrator."""

    def generate(self, context):
        return CalibrationSet(torch.full((4, *context.prior.input_size), float("nan")))


def test_nan_generator_becomes_an_error_record(tmp_path):
    GENERATORS.add("test_nan", _NaNGenerator)
    METHODS.add("test_nan", MethodSpec(generator="test_nan", calibrator="minmax"))
    try:
        spec = GridSpec(methods=("test_nan",), bits=("w4a4",), models=("digits_vit_seed0",), limit=20)
        summary = GridRunner(tmp_path).run(spec)
    finally:
        GENERATORS._entries.pop("test_nan")
        METHODS._entries.pop("test_nan")
    assert summary.failed == 1
    assert summary.records[0]["error"] == "generator 'test_nan' produced non-finite images"


def test_corrupt_cache_entry_is_regenerated(tmp_path):
    spec = GridSpec(methods=("noise",), bits=("w4a4",), models=("digits_vit_seed0",), limit=20)
    first = GridRunner(tmp_path).run(spec).records[0]
    entry = next((tmp_path / "cache" / "generators" / "noise").glob("*.safetensors"))
    entry.write_bytes(b"not a safetensors file")
    again = GridRunner(tmp_path, force=True).run(spec).records[0]
    assert again["status"] == "ok" and again["generator_cache_hit"] is False
    assert again["metrics"] == first["metrics"]
    assert read_calibration(entry).calibration.images.shape == (32, 1, 16, 16)


def test_disk_full_is_one_line_and_keeps_finished_records(tmp_path, monkeypatch, capsys):
    from harness.entry import cli
    from harness.store import io

    out = tmp_path / "r"
    base = ["run", "--methods", "noise", "--models", "digits_vit_seed0", "--limit", "20", "--results", str(out),
            "--no-progress", "--no-report"]
    assert cli.main([*base, "--bits", "w8a8"]) == 0
    kept = {p: p.read_text() for p in (out / "records").glob("*.json")}
    real_fsync = io.os.fsync

    def full_disk(fd):
        real_fsync(fd)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full_disk)
    capsys.readouterr()
    assert cli.main([*base, "--bits", "w8a8,w4a4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write record") and "No space left on device" in err and err.count("\n") == 1
    assert {p: p.read_text() for p in (out / "records").glob("*.json")} == kept
    assert not list((out / "records").glob(".*.tmp"))


def test_a_name_or_seed_given_twice_is_one_cell_counted_once(tmp_path):
    spec = GridSpec(methods=("noise", "noise"), bits=("w4a8", "w4a8"), models=("digits_vit_seed0",) * 2,
                    seeds=(0, 0), limit=20)
    summary = GridRunner(tmp_path).run(spec)
    assert (summary.computed, summary.skipped, len(summary.records)) == (1, 0, 1)


def test_a_failed_recompute_keeps_the_finished_record_and_files_the_failure_beside_it(tmp_path, monkeypatch):
    spec = GridSpec(methods=("noise",), bits=("w4a8",), models=("digits_vit_seed0",), limit=20)
    (finished,) = GridRunner(tmp_path).run(spec).records
    before = (tmp_path / "records" / f"{finished['cell_id']}.json").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr("harness.run.worker.quantize_model", broken)
    forced = GridRunner(tmp_path, force=True).run(spec)
    assert forced.failed == 1 and forced.records[0]["error"] == "RuntimeError: simulated failure"
    assert (tmp_path / "records" / f"{finished['cell_id']}.json").read_text() == before
    failure = json.loads((tmp_path / "failures" / f"{finished['cell_id']}.json").read_text())
    assert failure["status"] == "error" and failure["kept_finished_record"].endswith(f"{finished['cell_id']}.json")
    assert GridRunner(tmp_path).run(spec).skipped == 1  # the kept record still counts as finished
