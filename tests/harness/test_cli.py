import subprocess
import sys
from pathlib import Path

import pytest

from harness.entry.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, expected", [
    (["run", "--methods", "nosie"], "unknown method 'nosie' (did you mean 'noise'?)"),
    (["run", "--tasks", "imagenette"], "unknown task 'imagenette'"),
    (["run", "--models", "deit_giant"], "unknown model 'deit_giant'"),
    (["run", "--bits", "w4x"], "malformed bit spec 'w4x'; accepted: wXaY"),
    (["run", "--seeds", "one"], "seeds must be integers"),
    (["run", "--profile", "fancy"], "unknown quantizer profile 'fancy'; known quantizer profiles: psaq, standard"),
    (["run", "--gen-opt", "num_images"], "malformed generator option 'num_images'; expected KEY=VALUE"),
    (["run", "--methods", "real", "--gen-opt", "iterations=5"], "generator 'real' has no option 'iterations'; accepted: num_images"),
    (["run", "--calib", "magic"], "unknown calibrator 'magic'"),
    (["run", "--limit", "0"], "limit must be a positive number"),
    (["run", "--grid", "/nonexistent/grid.yaml"], "grid file /nonexistent/grid.yaml is unreadable"),
    (["run", "--executor", "mpi"], "invalid choice: 'mpi'"),
    (["run", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["run", "--threads", "0"], "--threads must be a positive number"),
    (["list", "everything"], "invalid choice: 'everything'"),
    (["report", "--results", "/nonexistent/dfq"], "no records in /nonexistent/dfq/records"),
    ([], "the following arguments are required: command"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, expected, capsys, tmp_path):
    if argv and argv[0] == "run":
        argv = [*argv, "--results", str(tmp_path)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert expected in captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert not list(tmp_path.glob("records/*.json"))


def test_no_traceback_from_a_real_process():
    result = subprocess.run([sys.executable, "-m", "harness", "run", "--bits", "w4a99"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert "out of range" in result.stderr


def test_list_shows_every_kind(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for expected in ("methods:", "noise", "calibrators:", "omse", "tasks:", "digits", "models:",
                     "digits_vit_seed1", "bits:", "wXaY"):
        assert expected in out


def test_run_then_report(tmp_path, capsys):
    assert main(["run", "--methods", "real,noise", "--models", "digits_vit_seed0", "--bits", "w8a8,w4a3",
                 "--limit", "100", "--results", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 cells computed, 0 already finished, 0 failed" in out and "w4a3" in out
    assert main(["report", "--results", str(tmp_path)]) == 0
    report = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "## digits (top1)" in report and "| noise" in report and "(1)" in report


def test_grid_file_run_with_flag_override(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("methods: [noise]\nmodels: [digits_vit_seed0]\nbits: [w8a8, w4a4]\nlimit: 40\n")
    assert main(["run", "--grid", str(grid), "--bits", "w4a4", "--results", str(tmp_path / "r"), "--no-progress",
                 "--no-report"]) == 0
    assert "1 cells computed" in capsys.readouterr().out
    record = next((tmp_path / "r" / "records").glob("*.json")).read_text()
    assert '"bits": "w4a4"' in record and '"limit": 40' in record
