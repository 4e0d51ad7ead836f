"""Leaderboard comparisons carry a test over seeds; differences within seed noise are marked so."""
import math
from pathlib import Path

import pytest

from harness.run.grid import component_code
from reports.content import build_report
from reports.published import PublishedTable
from reports.significance import compare


def test_paired_on_shared_seeds():
    mine, other = {0: 70.0, 1: 72.0, 2: 71.0}, {0: 60.0, 1: 63.0, 2: 60.5, 3: 99.0}
    comparison = compare(mine, other, "noise")
    # differences 10, 9, 10.5 over the 3 shared seeds: t = mean / (sd / sqrt 3); with 2 degrees of
    # freedom the two-sided p is 1 - t / sqrt(t^2 + 2)
    t = (29.5 / 3) / (math.sqrt(((10 - 29.5 / 3) ** 2 + (9 - 29.5 / 3) ** 2 + (10.5 - 29.5 / 3) ** 2) / 2) / math.sqrt(3))
    assert comparison.paired and comparison.seeds == 3
    assert comparison.difference == pytest.approx(29.5 / 3)
    assert comparison.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-6)
    assert comparison.significant


def test_a_difference_within_noise_is_not_significant():
    comparison = compare({0: 70.0, 1: 60.0, 2: 66.0}, {0: 64.0, 1: 66.0, 2: 65.0}, "best")
    assert comparison.p_value > 0.05 and not comparison.significant


def test_one_seed_cannot_be_tested_and_constant_differences_are_exact():
    assert compare({0: 70.0}, {0: 60.0}, "real").p_value is None
    assert compare({0: 70.0, 1: 71.0}, {0: 60.0, 1: 61.0}, "real").p_value == 0.0
    assert compare({0: 70.0, 1: 71.0}, {0: 70.0, 1: 71.0}, "real").p_value == 1.0


def test_welch_without_shared_seeds():
    comparison = compare({0: 70.0, 1: 71.0, 2: 72.0}, {5: 50.0, 6: 52.0, 7: 51.0}, "noise")
    assert not comparison.paired and comparison.seeds == 3 and comparison.significant
    assert comparison.difference == pytest.approx(20.0)


def _record(label: str, seed: int, top1: float, bits: str = "w4a4") -> dict:
    return {"schema": 2, "status": "ok", "cell_id": f"{label}-{seed}-{bits}", "label": label, "method": label,
            "generator": label, "calibrator": "minmax", "task": "digits", "model": "m", "bits": bits, "seed": seed,
            "weights_id": "w", "options": {"limit": None}, "metrics": {"top1": top1}, "fp_metrics": {"top1": 97.0},
            "code": component_code("digits", label, "minmax")}  # the checkout's code: no stale mark


def test_the_leaderboard_compares_each_row_with_the_best_and_the_baselines(tmp_path: Path):
    records = [_record("real", s, v) for s, v in enumerate([80.0, 81.0, 82.0])]
    records += [_record("noise", s, v) for s, v in enumerate([50.0, 55.0, 52.0])]
    records += [_record("psaq", s, v) for s, v in enumerate([83.0, 80.5, 84.0])]
    records += [_record("spdfq", s, v) for s, v in enumerate([70.0, 71.0, 69.0])]
    report = build_report(records, tmp_path, published=PublishedTable([]))
    (board,) = report.tasks[0].sections[0].leaderboards
    cells = {row.label: row.cells[0] for row in board.rows}
    assert cells["psaq"].best and {c.against for c in cells["psaq"].comparisons} == {"real", "noise"}
    by_against = {c.against: c for c in cells["spdfq"].comparisons}
    assert set(by_against) == {"best", "real", "noise"}
    assert by_against["best"].difference == pytest.approx(70.0 - 82.5) and by_against["best"].significant
    psaq_vs_real = next(c for c in cells["psaq"].comparisons if c.against == "real")
    assert not psaq_vs_real.significant  # +1.5 with a spread of seeds: within noise
    assert {c.against for c in cells["real"].comparisons} == {"noise", "best"}
