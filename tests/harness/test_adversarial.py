"""Every file the harness reads may be wrong (issue 31): each case, reproduced through the public entry points,
ends in one named line, the file set aside or rebuilt, and exactly the records that should count."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

from harness.entry.cli import main
from harness.plugin.options import Range, checked_value
from harness.plugin.registry import CALIBRATORS, GENERATORS, TUNERS
from harness.store.records import ResultStore
from reports.render import markdown_text

REPO = Path(__file__).resolve().parents[2]
CELL = ["--methods", "noise", "--tasks", "digits", "--models", "digits_vit_seed0", "--seeds", "0", "--limit", "20",
        "--bits", "w4a8", "--no-progress", "--no-report"]


def _record_path(results: Path) -> Path:
    (path,) = results.glob("records/*.json")
    return path


def _invalid_lines(results: Path) -> list[str]:
    index = (results / "report" / "index.md").read_text()
    return [line for line in index.splitlines() if line.startswith("- `")]


# --- records: identity is content, never the file name -------------------------------------------------

IDENTITY_PROBLEM = "differs from its file name (a copy or a renamed record); a record counts only in the file its cell_id names"


def test_a_copied_record_is_not_another_seed(results, capsys):
    original = _record_path(results)
    copy = original.with_name(f"{original.stem} (copy).json")
    shutil.copy(original, copy)
    capsys.readouterr()

    assert main(["report", "--results", str(results)]) == 0
    assert len(list(ResultStore(results).records())) == 1
    assert _invalid_lines(results) == [f"- `{copy.name}`: its cell_id '{original.stem}' {markdown_text(IDENTITY_PROBLEM)}"]
    rows = [line for line in (results / "report" / "digits.md").read_text().splitlines() if "<br>drop" in line]
    assert len(rows) == 1 and " (1)<br>drop" in rows[0]  # one seed, as it was before the copy (was: 2)

    assert main(["run", *CELL, "--results", str(results)]) == 0
    captured = capsys.readouterr()
    assert "0 cells computed, 1 already finished, 0 failed" in captured.out
    assert f"  {copy}: its cell_id '{original.stem}' {IDENTITY_PROBLEM}" in captured.err.splitlines()
    assert copy.exists()  # named, never deleted: it is not at any cell's path


def test_a_record_under_another_cells_name_is_set_aside_and_recomputed(results, capsys):
    path = _record_path(results)
    record = json.loads(path.read_text())
    record["cell_id"] = "0" * 16
    path.write_text(json.dumps(record))
    capsys.readouterr()

    assert main(["run", *CELL, "--results", str(results)]) == 0  # was: internal error, KeyError
    captured = capsys.readouterr()
    assert "1 cells computed, 0 already finished, 0 failed" in captured.out
    assert f"  {path}: its cell_id '{'0' * 16}' {IDENTITY_PROBLEM}" in captured.err.splitlines()
    (aside,) = results.glob("invalid/*.json")
    assert json.loads(aside.read_text())["cell_id"] == "0" * 16
    assert json.loads(path.read_text())["cell_id"] == path.stem
    assert len(list(ResultStore(results).records())) == 1


# --- records: malformed optional fields ----------------------------------------------------------------

@pytest.mark.parametrize("field, value, problem", [
    ("timing_s", "slow", "timing_s is 'slow', expected a mapping"),
    ("timing_s", {"evaluate": "slow"}, "timing_s.evaluate is 'slow', expected a finite number"),
    ("memory", [1], "memory is [1], expected a mapping"),
    ("memory", {"peak_rss_mb": None}, "memory.peak_rss_mb is null, expected a finite number"),
    ("code", "x", "code is 'x', expected a mapping"),
    ("code", {"task": "x"}, "code.task is 'x', expected a mapping"),
    ("code", {"task": {"version": 1}}, "code.task.version is 1, expected a string"),
    ("versions", ["torch"], "versions is ['torch'], expected a mapping"),
    ("versions", {"torch": {"v": 2}}, "versions.torch is {'v': 2}, expected a string"),
    ("kernels", "cpu", "kernels is 'cpu', expected a mapping"),
    ("kernels", {"cpu": {"extensions": 5}}, "kernels.cpu.extensions is 5, expected a list"),
    ("deployment", "x", "deployment is 'x', expected a mapping"),
    ("deployment", {"deployable": True}, "deployment.speedup is missing, expected a mapping"),
    ("deployment", {"deployable": False, "cpu": {"extensions": "avx2"}},
     "deployment.cpu.extensions is 'avx2', expected a list"),
    ("deployment", {"deployable": True, "speedup": {"batch1": 2.0, "batch32": "fast"}, "size_ratio": 0.3,
                    "metrics": {}, "difference": {}}, "deployment.speedup.batch32 is 'fast', expected a finite number"),
])
def test_a_malformed_optional_field_makes_the_record_invalid_and_named(results, capsys, field, value, problem):
    path = _record_path(results)
    record = json.loads(path.read_text())
    record[field] = value
    path.write_text(json.dumps(record))
    capsys.readouterr()

    assert main(["report", "--results", str(results)]) == 0  # was: exit 1, "internal error", no file named
    captured = capsys.readouterr()
    assert "internal error" not in captured.err
    assert _invalid_lines(results) == [f"- `{path.name}`: {markdown_text(problem)}"]
    assert list(ResultStore(results).records()) == []

    assert main(["run", *CELL, "--results", str(results)]) == 0
    captured = capsys.readouterr()
    assert "1 cells computed, 0 already finished, 0 failed" in captured.out
    assert f"  {path}: {problem}" in captured.err.splitlines()
    assert len(list(results.glob("invalid/*.json"))) == 1 and len(list(ResultStore(results).records())) == 1


# --- FP-metric cache files ------------------------------------------------------------------------------

def _run_bits(results: Path, bits: str) -> int:
    """Another bit width of the same model: a cell that reads the cached FP metric of the finished one."""
    return main(["run", *[bits if previous == "w4a8" else previous for previous in CELL], "--results", str(results)])


@pytest.mark.parametrize("metrics, problem", [
    ("x", "metrics is 'x', expected a mapping"),
    ({"top1": 1000}, "metrics.top1 is 1000, expected a number in [0, 100]"),
    ({"top1": -1.5}, "metrics.top1 is -1.5, expected a number in [0, 100]"),
    ({"top1": float("nan")}, "metrics.top1 is nan, expected a finite number"),
    ({"top1": float("inf")}, "metrics.top1 is inf, expected a finite number"),
    ({"top1": True}, "metrics.top1 is True, expected a finite number"),
    ({"top1": 10**400}, f"metrics.top1 is {str(10**400)[:40]}, expected a number in [0, 100]"),  # was: OverflowError
    ({"top5": 90.0}, "metrics ['top5'], expected the task's ['top1']"),
])
def test_a_bad_fp_metric_is_named_recomputed_and_rewritten_once(results, capsys, metrics, problem):
    finished = json.loads(_record_path(results).read_text())
    (path,) = results.glob("fp/*.json")
    cached = json.loads(path.read_text())
    path.write_text(json.dumps({**cached, "metrics": metrics}))
    capsys.readouterr()

    assert _run_bits(results, "w8a8") == 0  # was: an invalid ok record, then "internal error"; or top1 1000 copied
    captured = capsys.readouterr()
    assert "1 cells computed, 0 already finished, 0 failed" in captured.out
    assert [line for line in captured.err.splitlines() if "FP metric" in line] == [
        f"warning: FP metric {path} is not usable ({problem}); recomputing it"]
    assert json.loads(path.read_text())["metrics"] == finished["fp_metrics"]  # rewritten
    assert all(record["fp_metrics"] == finished["fp_metrics"] for record in ResultStore(results).records())
    assert ResultStore(results).invalid_records() == []

    assert _run_bits(results, "w4a4") == 0  # the next run reads the rebuilt file: no repeat
    assert "FP metric" not in capsys.readouterr().err


# --- option ranges, declared with the options and checked before the grid ---------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--calib", "percentile", "--calib-opt", "percentile=150"],
     "calibrator 'percentile' option percentile=150 is out of range; accepted: a value in (0, 100]"),
    (["--calib", "percentile", "--calib-opt", "percentile=-5"],
     "calibrator 'percentile' option percentile=-5 is out of range; accepted: a value in (0, 100]"),
    (["--calib", "omse", "--calib-opt", "num_candidates=0"],
     "calibrator 'omse' option num_candidates=0 is out of range; accepted: a value >= 1"),
    (["--calib", "omse", "--calib-opt", "weight_min_ratio=0"],
     "calibrator 'omse' option weight_min_ratio=0 is out of range; accepted: a value in (0, 1]"),
    (["--data", "psaq", "--calib", "minmax", "--gen-opt", "flip_probability=1.5"],
     "generator 'psaq' option flip_probability=1.5 is out of range; accepted: a value in [0, 1]"),
    (["--data", "psaq", "--calib", "minmax", "--gen-opt", "lr=0"],
     "generator 'psaq' option lr=0 is out of range; accepted: a value > 0"),
    (["--data", "psaq", "--calib", "minmax", "--gen-opt", "roll_ranges=[5,-1]"],
     "generator 'psaq' option roll_ranges=[5, -1] is out of range; accepted: each element a value >= 0"),
    (["--data", "noise", "--calib", "minmax", "--gen-opt", "num_images=0"],
     "generator 'noise' option num_images=0 is out of range; accepted: a value >= 1"),
])
def test_an_option_out_of_range_is_one_line_before_any_cell(tmp_path, capsys, flags, message):
    argv = ["run", "--tasks", "digits", "--models", "digits_vit_seed0", "--bits", "w4a8", "--limit", "20",
            "--no-progress", "--results", str(tmp_path), *flags]
    assert main(argv) == 2  # was: ok records (percentile), or a division by zero in every cell (omse)
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "records").exists()


def _numeric(annotation) -> bool:
    """int or float, possibly optional, or a list or tuple of them (a bool is no number)."""
    arguments = [a for a in typing.get_args(annotation) if a not in (type(None), Ellipsis)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, tuple, list):
        return bool(arguments) and all(_numeric(argument) for argument in arguments)
    return annotation in (int, float)


def test_every_numeric_option_of_every_generator_calibrator_and_tuner_declares_its_range():
    undeclared = []
    for kind, registry in (("generator", GENERATORS), ("calibrator", CALIBRATORS), ("tuner", TUNERS)):
        for name, plugin in registry.items():
            hints = typing.get_type_hints(plugin.Options)
            undeclared += [f"{kind} {name}: {field.name}" for field in dataclasses.fields(plugin.Options)
                           if _numeric(hints[field.name]) and not isinstance(field.metadata.get("range"), Range)
                           and field.name not in UNBOUNDED]
    assert undeclared == []


def test_every_option_default_lies_in_its_declared_range():
    for registry in (GENERATORS, CALIBRATORS, TUNERS):
        for name, plugin in registry.items():
            hints, defaults = typing.get_type_hints(plugin.Options), plugin.Options()
            for field in dataclasses.fields(plugin.Options):
                if "range" in field.metadata:  # raises a HarnessError naming the option if not
                    checked_value(getattr(defaults, field.name), hints[field.name], field.metadata["range"],
                                  f"{name} option {field.name}")


UNBOUNDED = {"target_logit_range"}  # SPDFQ's soft-label logits: any real pair (docs/methods.md, SPDFQ)


# --- output: a reader that goes away -------------------------------------------------------------------

def test_a_closed_pipe_ends_list_quietly():
    """``harness list | head -1``: the reader is gone before the first write (its end closed before the
    process starts), so every run meets the broken pipe, whatever the pipe's buffer holds."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "harness", "list"], stdout=write_end, stderr=subprocess.PIPE,
                                text=True, cwd=REPO, timeout=120)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")  # was: 1, "internal error: BrokenPipeError: ..."


def test_a_pipe_closed_after_the_first_line_ends_list_quietly():
    result = subprocess.run(f"{sys.executable} -m harness list | head -1; echo \"rc=${{PIPESTATUS[0]}}\"",
                            shell=True, executable="/bin/bash", capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.splitlines()[0] == "methods:"
    assert result.stderr == "" and result.stdout.splitlines()[-1] in ("rc=0", "rc=141")


# --- export: never over a file it was not asked to replace ----------------------------------------------

def _export(results: Path, out: Path, *flags: str) -> int:
    return main(["export", "--cell", _record_path(results).stem, "--results", str(results), "--threads", "1",
                 *flags, str(out)])


def _temporary_files(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.name.startswith(".")]


def test_export_never_writes_over_a_record(results, capsys):
    record = _record_path(results)
    before = record.read_bytes()
    capsys.readouterr()

    for flags in ((), ("--overwrite",)):  # was: rc 0, the ONNX model over the finished record
        assert _export(results, record, *flags) == 2
        assert capsys.readouterr().err == (f"error: output path {record} is inside the results folder {results}; "
                                           "name a file outside it (the results folder holds only what runs write)\n")
    assert record.read_bytes() == before


@pytest.mark.parametrize("make, message", [
    (lambda out: out.write_text("mine"),
     "error: output path {out} already exists; pass --overwrite to replace it, or name a new file"),
    (lambda out: out.mkdir(),
     "error: output path {out} is a directory; name the ONNX file to write, e.g. {out}/model.onnx"),
])
def test_export_refuses_an_existing_path_before_recalibrating(results, tmp_path, capsys, monkeypatch, make, message):
    from harness.run.worker import CellWorker

    out = tmp_path / "model.onnx"
    make(out)
    monkeypatch.setattr(CellWorker, "calibrated_model", lambda *_: pytest.fail("recalibrated before the path check"))
    capsys.readouterr()

    assert _export(results, out) == 2
    assert capsys.readouterr().err == message.format(out=out) + "\n"
    assert not out.is_file() or out.read_text() == "mine"


def test_export_under_a_file_is_one_line(results, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" / "sub" / "model.onnx"
    capsys.readouterr()

    assert _export(results, out) == 2  # was: internal error, NotADirectoryError
    assert capsys.readouterr().err == (f"error: output path {out} is under {tmp_path / 'file'}, which is a file; "
                                       "name a file in a folder\n")


def test_export_replaces_only_with_overwrite_and_atomically(results, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxscript", reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
    from torch.onnx import ONNXProgram

    out = tmp_path / "model.onnx"
    out.write_text("mine")
    real_save = ONNXProgram.save

    def save_half_then_fail(program, destination, **kwargs):
        Path(destination).write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(ONNXProgram, "save", save_half_then_fail)
    assert _export(results, out, "--overwrite") == 130
    assert out.read_text() == "mine" and _temporary_files(tmp_path) == []

    monkeypatch.setattr(ONNXProgram, "save", real_save)
    capsys.readouterr()
    assert _export(results, out, "--overwrite") == 0
    assert capsys.readouterr().out.endswith(f"written: {out}\n")
    assert out.read_bytes()[:4] != b"mine" and _temporary_files(tmp_path) == []


# --- report: whole or not at all ------------------------------------------------------------------------

def _report_files(report: Path) -> dict[str, bytes]:
    return {str(path.relative_to(report)): path.read_bytes() for path in sorted(report.rglob("*")) if path.is_file()}


def test_a_failing_report_leaves_the_previous_one_whole(results, capsys, monkeypatch):
    import reports.render

    assert main(["report", "--results", str(results)]) == 0
    report = results / "report"
    (report / "index.md").write_text("the previous report")
    before = _report_files(report)

    def fail(*_):
        raise KeyboardInterrupt  # as SIGINT would, after the Markdown pages are written

    monkeypatch.setattr(reports.render, "write_html", fail)
    assert main(["report", "--results", str(results)]) == 130  # was: Markdown new, HTML old
    assert _report_files(report) == before
    assert sorted(path.name for path in results.iterdir() if path.name.startswith(".report.")) == [".report.lock"]


def test_a_report_replaces_all_its_files_and_an_interrupted_attempts_leftovers(results, capsys):
    assert main(["report", "--results", str(results)]) == 0
    report = results / "report"
    expected = _report_files(report)
    (report / "index.md").write_text("stale")
    (report / "gone-task.md").write_text("a task no record has any more")
    (results / ".report.abc123.new").mkdir()  # an attempt killed while filling its folder
    (results / ".report.old").mkdir()  # and one killed after the swap, before removing the old folder

    assert main(["report", "--results", str(results)]) == 0
    assert _report_files(report) == expected
    assert sorted(path.name for path in results.iterdir() if path.name.startswith(".report.")) == [".report.lock"]


def test_a_report_killed_between_its_renames_is_restored_first(results, capsys, monkeypatch):
    import reports.render

    assert main(["report", "--results", str(results)]) == 0
    before = _report_files(results / "report")
    (results / "report").rename(results / ".report.old")
    monkeypatch.setattr(reports.render, "write_html", lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))

    assert main(["report", "--results", str(results)]) == 130
    assert _report_files(results / "report") == before


def test_a_report_folder_holding_other_files_is_refused(results, capsys):
    capsys.readouterr()
    assert main(["report", "--results", str(results), "--out", str(results)]) == 2
    assert capsys.readouterr().err == (f"error: report folder {results} holds files that are not a report's "
                                       "(cache, fp, locks, ...); name a folder that is new or holds only a report, "
                                       "as it is replaced whole\n")
    assert len(list(ResultStore(results).records())) == 1
