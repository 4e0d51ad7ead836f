"""``run --dry-run``: cells, what the results folder holds, and estimates from the records' timings."""
from __future__ import annotations

import json

import huggingface_hub
import pytest

from harness.entry.cli import main
from harness.run.grid import GridSpec
from harness.run.plan import format_plan, plan_grid
from harness.run.runner import GridRunner

MODEL = "digits_vit_seed0"
TIMING = {"generate": 10.0, "calibrate": 20.0, "evaluate": 30.0}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One finished noise cell (W4A4, seed 0), its timings set to known values."""
    out = tmp_path_factory.mktemp("results")
    summary = GridRunner(out).run(GridSpec(methods=("noise",), bits=("w4a4",), models=(MODEL,), limit=20))
    record_path = next((out / "records").glob("*.json"))
    record = json.loads(record_path.read_text())
    assert summary.computed == 1 and record["status"] == "ok"
    record_path.write_text(json.dumps({**record, "timing_s": TIMING}))
    return out


def _spec(**changes) -> GridSpec:
    return GridSpec(**{"methods": ("noise",), "bits": ("w4a4", "w8a8"), "models": (MODEL,), "seeds": (0, 1),
                       "limit": 20, **changes})


def test_the_plan_names_what_is_there_and_estimates_the_rest(results):
    plan = plan_grid(_spec(), results)
    states = {(str(item.cell.bits), item.cell.seed): item for item in plan.cells}
    assert states[("w4a4", 0)].state == "finished" and not states[("w4a4", 0)].stages
    # seed 0's images are cached (noise does not depend on the bits), seed 1's are made once, by its first cell
    assert states[("w8a8", 0)].calibration_cached and states[("w8a8", 0)].fp_cached
    assert states[("w8a8", 0)].stages == {"calibrate": 20.0, "evaluate": 30.0}
    assert states[("w4a4", 1)].calibration_cached is False
    assert states[("w4a4", 1)].stages == {"generate": 10.0, "calibrate": 20.0, "evaluate": 30.0}
    assert states[("w8a8", 1)].stages == {"calibrate": 20.0, "evaluate": 30.0}
    assert "same model, task, generator" in states[("w8a8", 0)].basis["calibrate"]  # not the same bits
    assert plan.stage_totals()["generate"] == (1, 10.0, 0) and plan.stage_totals()["evaluate"] == (3, 90.0, 0)
    assert plan.makespan(1) == 160.0 and plan.makespan(2) == 100.0  # 60 | 50 + 50
    assert plan.makespan(8) == 60.0  # no less than the longest cell


def test_force_plans_everything_and_unknown_stages_say_so(results):
    plan = plan_grid(_spec(methods=("real",), bits=("w4a4",), seeds=(0,)), results, force=True)
    (item,) = plan.cells
    assert item.state == "to run" and item.calibration_cached is False and item.fp_cached is False
    assert item.stages == {"fp evaluate": 30.0, "generate": None, "calibrate": 20.0, "evaluate": 30.0}
    assert item.basis["generate"] == "no finished record with generator real"
    text = format_plan(plan)
    assert "generate        1 x, 0.0 s, 1 without an estimate" in text and "total: 1.3 min on one worker" in text


def test_missing_weights_are_planned_without_downloading(results, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    plan = plan_grid(GridSpec(methods=("noise",), tasks=("imagenet",), models=("deit_tiny_patch16_224",),
                              bits=("w8a8", "w4a8")), results)
    assert [item.state for item in plan.cells] == ["unknown"] * 2 and list(tmp_path.iterdir()) == []
    assert "no weights for deit_tiny_patch16_224" in plan.cells[0].note
    # one FP metric and one calibration set for both cells; only noise generation has a record (on digits)
    totals = plan.stage_totals()
    assert (totals["fp evaluate"], totals["generate"], totals["evaluate"]) == ((1, 0.0, 1), (1, 10.0, 0), (2, 0.0, 2))


def test_dry_run_prints_the_totals_for_k_workers_and_runs_nothing(results, capsys):
    records = sorted(path.name for path in (results / "records").iterdir())
    assert main(["run", "--methods", "noise", "--models", MODEL, "--bits", "w4a4,w8a8", "--seeds", "0,1",
                 "--limit", "20", "--results", str(results), "--dry-run", "--workers-estimate", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 cells: 1 finished, 3 to run" in out
    assert "total: 2.7 min on one worker, 1.7 min on 2 workers" in out
    assert sorted(path.name for path in (results / "records").iterdir()) == records
