"""``harness report`` and the report at the end of ``harness run``."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.entry.cli import main


def test_report_writes_the_formats_asked_for(grid_results: Path, capsys):
    assert main(["report", "--results", str(grid_results), "--format", "md"]) == 0
    out = grid_results / "report"
    assert capsys.readouterr().out == f"written: {out / 'index.md'}\n"
    assert {p.name for p in out.iterdir()} == {"index.md", "leaderboard.md", "imagenet.md", "figures"}


def test_unknown_format_is_one_line_and_exit_code_2(grid_results: Path, capsys):
    assert main(["report", "--results", str(grid_results), "--format", "html,pdf"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --format accepts html, md; got html,pdf\n"
    assert not (grid_results / "report").exists()


def test_run_rewrites_the_report_and_survives_its_failure(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    argv = ["run", "--methods", "noise", "--models", "digits_vit_seed0", "--bits", "w8a8", "--limit", "20",
            "--results", str(tmp_path), "--no-progress"]
    assert main([*argv, "--no-report"]) == 0
    assert not (tmp_path / "report").exists()

    def broken(*args, **kwargs):
        raise RuntimeError("template exploded\nwith a second line")

    with monkeypatch.context() as patch:
        patch.setattr("reports.render.write_report", broken)
        assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.startswith("report not written (RuntimeError: template exploded); retry with") and err.count("\n") == 1
    assert len(list((tmp_path / "records").glob("*.json"))) == 1

    assert main(argv) == 0
    assert f"report: {tmp_path / 'report' / 'index.md'}, {tmp_path / 'report' / 'report.html'}" in capsys.readouterr().out
    assert "noise" in (tmp_path / "report" / "digits.md").read_text()
