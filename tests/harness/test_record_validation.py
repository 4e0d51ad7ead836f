"""Records are validated on read: an invalid one is named, never counted as finished, never lost."""
import json
from markupsafe import escape  # what the HTML template applies

import pytest

from harness.entry.cli import main
from harness.store.keys import RECORD_SCHEMA
from harness.store.records import ResultStore, record_problem

CELL = ["--methods", "noise", "--tasks", "digits", "--models", "digits_vit_seed0", "--seeds", "0", "--limit", "20",
        "--bits", "w4a8", "--no-progress", "--no-report"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    assert main(["run", *CELL, "--results", str(out)]) == 0
    return json.loads(next(out.glob("records/*.json")).read_text())


@pytest.mark.parametrize("edit, problem", [
    (lambda r: {"schema": RECORD_SCHEMA, "status": "ok", "cell_id": r["cell_id"]}, "field 'method' is missing"),
    (lambda r: {**r, "metrics": None}, "field 'metrics' is null, expected metric names with numbers"),
    (lambda r: {**r, "metrics": {"top1": "95"}}, "metrics.top1 is '95', expected a finite number"),
    (lambda r: {**r, "fp_metrics": {}}, "field 'fp_metrics' is {}"),
    (lambda r: {**r, "schema": 0}, "schema 0; this harness reads schema 2"),
    (lambda r: {**r, "schema": 99}, "schema 99; this harness reads schema 2"),
    (lambda r: {**r, "status": "done"}, "status 'done'; expected 'ok' or 'error'"),
    (lambda r: {**r, "seed": "0"}, "field 'seed' is '0', expected int"),
])
def test_record_problems_are_named(finished, edit, problem):
    assert record_problem(finished) is None
    assert problem in record_problem(edit(finished))


@pytest.mark.parametrize("damage, problem", [
    (lambda path, r: path.write_text(json.dumps({"schema": 2, "status": "ok", "cell_id": r["cell_id"]})),
     "field 'method' is missing"),
    (lambda path, r: path.write_text(json.dumps({**r, "metrics": None})), "field 'metrics' is null"),
    (lambda path, r: path.write_text(json.dumps(r)[:50]), "not valid JSON (a torn or edited file)"),
    (lambda path, r: path.write_text(json.dumps({**r, "schema": 99})), "schema 99"),
])
def test_an_invalid_record_is_named_recomputed_and_set_aside(damage, problem, tmp_path, capsys):
    assert main(["run", *CELL, "--results", str(tmp_path)]) == 0
    path = next(tmp_path.glob("records/*.json"))
    original = json.loads(path.read_text())
    damage(path, original)
    damaged = path.read_bytes()
    capsys.readouterr()

    assert main(["report", "--results", str(tmp_path)]) == 0  # never an internal error
    index = (tmp_path / "report" / "index.md").read_text()
    assert f"- `{path.name}`: {problem}" in index
    assert not (tmp_path / "report" / "digits.md").exists()  # no valid record: no table
    html = (tmp_path / "report" / "report.html").read_text()
    assert f"<code>{path.name}</code>: {escape(problem)}" in html

    assert main(["run", *CELL, "--results", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "1 cells computed, 0 already finished" in captured.out  # not counted as finished
    assert f"{path}: {problem}" in captured.err
    aside = list(tmp_path.glob("invalid/*.json"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept, not overwritten
    record = json.loads(path.read_text())
    assert record_problem(record) is None and record["replaced_invalid_record"] == str(aside[0])
    assert record["metrics"] == original["metrics"]
    assert main(["report", "--results", str(tmp_path)]) == 0  # the set-aside file stays listed
    index = (tmp_path / "report" / "index.md").read_text()
    assert f"- `{aside[0].name}`: set aside, its cell recomputed: {problem}" in index


def test_report_lists_failed_cells(tmp_path, capsys):
    assert main(["run", *CELL, "--results", str(tmp_path)]) == 0
    path = next(tmp_path.glob("records/*.json"))
    record = json.loads(path.read_text())
    record.update(status="error", error="RuntimeError: out of memory")
    path.write_text(json.dumps(record))
    assert main(["report", "--results", str(tmp_path)]) == 0
    index = (tmp_path / "report" / "index.md").read_text()
    assert f"| digits | noise | digits_vit_seed0 | w4a8 | 0 | RuntimeError: out of memory | `{path.name}` |" in index
    assert ResultStore(tmp_path).invalid_records() == []
