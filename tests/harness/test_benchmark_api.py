"""``harness.benchmark``: the grid of ``run``, in this process, returned as DataFrames (README, From Python).

It shares cells, caches and records with the CLI both ways, returns the records' own values, and refuses a bad
argument with the CLI's one-line HarnessError before anything runs. Starts from the session's finished digits
cell (tests/harness/conftest.py: noise, W4A8, seed 0, first 20 images, made by ``python -m harness run``)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import harness
from harness.entry.cli import main
from harness.errors import HarnessError

REPO = Path(__file__).resolve().parents[2]
CELL = dict(methods="noise", tasks="digits", models="digits_vit_seed0", seeds=0, limit=20, bits="w4a8", progress=False)


def _record_values(results: Path) -> dict[tuple[str, int], float]:
    return {(record["method"], record["seed"]): record["metrics"]["top1"]
            for record in map(json.loads, map(Path.read_text, (results / "records").glob("*.json")))}


def test_a_cell_the_cli_finished_is_reused_with_the_records_values(results):
    before = {path.name: path.stat().st_mtime_ns for path in (results / "records").glob("*.json")}
    result = harness.benchmark(**CELL, results=results)
    assert (result.computed, result.skipped, result.failed) == (0, 1, 0)
    assert {path.name: path.stat().st_mtime_ns for path in (results / "records").glob("*.json")} == before
    [row] = result.cells.to_dict("records")
    assert row["metric.top1"] == _record_values(results)[("noise", 0)]
    [entry] = result.leaderboard.to_dict("records")
    assert (entry["task"], entry["metric"], entry["label"], entry["bits"], entry["seeds"]) == \
        ("digits", "top1", "noise", "w4a8", 1)
    assert entry["mean"] == row["metric.top1"] and entry["drop"] == pytest.approx(row["fp.top1"] - row["metric.top1"])


def test_cells_it_computes_are_finished_for_the_cli_and_for_itself(results, capsys):
    result = harness.benchmark(**{**CELL, "methods": ["noise", "real"]}, results=results)
    assert (result.computed, result.skipped) == (1, 1)
    values = _record_values(results)
    assert {(row["method"], row["seed"]): row["metric.top1"] for row in result.cells.to_dict("records")} == values
    assert sorted(result.leaderboard["label"]) == ["noise", "real"]
    capsys.readouterr()
    assert main(["run", "--methods", "noise,real", "--tasks", "digits", "--models", "digits_vit_seed0", "--seeds", "0",
                 "--limit", "20", "--bits", "w4a8", "--no-progress", "--no-report", "--results", str(results)]) == 0
    assert "0 cells computed, 2 already finished, 0 failed" in capsys.readouterr().out
    again = harness.benchmark(**{**CELL, "methods": ("noise", "real")}, results=results)
    assert (again.computed, again.skipped) == (0, 2) and _record_values(results) == values


@pytest.mark.parametrize("arguments, message", [
    (dict(methods="rael"), "unknown method 'rael' (did you mean 'real'?)"),
    (dict(metods="real"), "benchmark() got an unknown keyword 'metods' (did you mean 'methods'?)"),
    (dict(seeds=[0, -1]), "benchmark(): seeds[1] is -1, expected an integer in [0, 4294967295]"),
    (dict(methods=3), "benchmark(): methods is 3, expected a list of method names or a comma-separated string"),
    (dict(gen_opt={"num_images": {}}), "benchmark(): gen_opt.num_images is"),
    (dict(bits="w1a8"), "bit width 1 in 'w1a8' is out of range"),
    (dict(force="yes"), "benchmark(): force is 'yes', expected True or False"),
    (dict(executor="cloud"), "benchmark(): executor is 'cloud'; accepted: local, isolated"),
    (dict(gen_opt={"nope": 1}), "nope"),
], ids=lambda value: str(value)[:40])
def test_a_bad_argument_is_one_line_and_runs_nothing(arguments, message, tmp_path):
    with pytest.raises(HarnessError) as error:
        harness.benchmark(**{**CELL, **arguments}, results=tmp_path / "results")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "results" / "records").exists()


def test_importing_harness_loads_no_torch():
    probe = "import sys, harness; harness.benchmark; print(sorted({'torch', 'pandas', 'timm'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr
