"""The report's first screen: the gap from noise to real images each row closes (reports/headline.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from reports.content import build_report
from reports.published import PublishedTable
from reports.render import write_markdown


def _cells(make_record, label: str, generator: str, calibrator: str, values: list[float],
           method: str | None = None) -> list[dict]:
    return [make_record(label=label, method=method or generator, generator=generator, calibrator=calibrator,
                        task="digits", model="m", bits="w4a4", seed=seed, top1=value)
            for seed, value in enumerate(values)]


def _records(make) -> list[dict]:
    return (_cells(make, "noise", "noise", "minmax", [50.0, 54.0, 52.0]) + _cells(make, "real", "real", "minmax", [80.0, 82.0, 81.0])
            + _cells(make, "psaq", "psaq", "minmax", [74.0, 76.0, 75.0])  # closes 23 of 29 points: 79 %
            + _cells(make, "spdfq", "spdfq", "block_recon", [81.0, 82.5, 80.0])  # no block_recon references: the baselines
            + _cells(make, "noise (noise+repq)", "noise", "repq", [70.0, 71.0, 72.0], method="noise")
            + _cells(make, "real (real+repq)", "real", "repq", [90.0, 91.0, 92.0], method="real")
            + _cells(make, "psaq (psaq+repq)", "psaq", "repq", [90.0, 91.5, 91.0]))


def test_each_row_is_measured_against_noise_and_real_calibrated_as_it_is(tmp_path: Path, make_record):
    report = build_report(_records(make_record), tmp_path, published=PublishedTable([]))
    rows = {row.label: row for row in report.tasks[0].headline}
    assert set(rows) == {"psaq", "spdfq", "psaq (psaq+repq)"}  # noise and real are the references, not rows
    assert (rows["psaq"].noise, rows["psaq"].real) == ("noise", "real")
    assert rows["psaq"].closed == pytest.approx(100 * (75 - 52) / (81 - 52))
    assert rows["psaq"].versus_real.difference == pytest.approx(-6.0) and rows["psaq"].versus_real.significant
    repq = rows["psaq (psaq+repq)"]
    assert (repq.noise, repq.real) == ("noise (noise+repq)", "real (real+repq)")
    assert repq.closed == pytest.approx(100 * (90.8333333 - 71) / (91 - 71))
    assert not repq.versus_real.significant  # -0.17 over three seeds whose spread is larger
    spdfq = rows["spdfq"]
    assert (spdfq.noise, spdfq.real) == ("noise", "real") and spdfq.closed > 100  # above real images: over 100 %


def test_the_first_screen_of_the_markdown_report_says_it(tmp_path: Path, make_record):
    report = build_report(_records(make_record), tmp_path, published=PublishedTable([]))
    index = write_markdown(report, tmp_path).read_text()
    shows = index.index("## What this run shows")
    assert shows < index.index("## Tasks")
    assert "| m | w4a4 | psaq | 75.00 | 79 % | -6.00 * | noise / real |" in index


def test_without_real_images_a_point_above_noise_there_is_no_gap_to_close(tmp_path: Path, make_record):
    make = make_record
    records = (_cells(make, "noise", "noise", "minmax", [80.0, 80.0]) + _cells(make, "real", "real", "minmax", [79.0, 79.0])
               + _cells(make, "psaq", "psaq", "minmax", [80.0, 81.0]))
    (row,) = build_report(records, tmp_path, published=PublishedTable([])).tasks[0].headline
    assert row.closed is None and row.versus_real.difference == pytest.approx(1.5)
    barely = (_cells(make, "noise", "noise", "minmax", [80.0, 80.0]) + _cells(make, "real", "real", "minmax", [80.9, 80.9])
              + _cells(make, "psaq", "psaq", "minmax", [80.0, 81.0]))
    (row,) = build_report(barely, tmp_path, published=PublishedTable([])).tasks[0].headline
    assert row.closed is None  # a gap of 0.9 points: its share would be noise
    assert "| gap < 1 |" in write_markdown(build_report(records, tmp_path, published=PublishedTable([])), tmp_path).read_text()
