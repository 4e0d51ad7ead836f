"""Which leaderboard differences exceed seed noise: a t-test over seeds, paired where seeds are shared.

Calibration seeds are the harness's unit of repetition (docs/results.md, Significance). Two rows
that ran the same seeds are compared seed by seed (a paired t-test on the differences), which
removes what a seed does to both; rows without two shared seeds fall back to Welch's test on their
own seeds; a row with a single seed cannot be tested, and says so rather than claiming a winner.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

ALPHA = 0.05  # a difference with p >= ALPHA is shown as within seed noise


@dataclass(frozen=True)
class Comparison:
    """One row against another (the column's best, ``real`` or ``noise``) at one bit width."""

    against: str
    difference: float  # this row's mean minus the other's, over the seeds the test used
    p_value: float | None  # None: too few seeds to test
    seeds: int  # shared seeds (paired) or the smaller of the two seed counts (Welch)
    paired: bool

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


def compare(values: dict[int, float], other: dict[int, float], against: str) -> Comparison:
    """Test ``values`` (seed -> metric) against ``other``; a constant difference has p 0 (or 1 when zero)."""
    shared = sorted(values.keys() & other.keys())
    if len(shared) >= 2:
        differences = [values[seed] - other[seed] for seed in shared]
        mean = sum(differences) / len(differences)
        if max(differences) == min(differences):
            p_value = 1.0 if mean == 0 else 0.0
        else:
            p_value = float(stats.ttest_rel([values[s] for s in shared], [other[s] for s in shared]).pvalue)
        return Comparison(against, mean, p_value, len(shared), paired=True)
    mine, theirs = list(values.values()), list(other.values())
    difference = sum(mine) / len(mine) - sum(theirs) / len(theirs)
    if min(len(mine), len(theirs)) < 2:
        return Comparison(against, difference, None, min(len(mine), len(theirs)), paired=False)
    p_value = float(stats.ttest_ind(mine, theirs, equal_var=False).pvalue)
    if math.isnan(p_value):  # both rows constant over their seeds
        p_value = 1.0 if difference == 0 else 0.0
    return Comparison(against, difference, p_value, min(len(mine), len(theirs)), paired=False)


def verdict(comparison: Comparison) -> str:
    """``*`` beyond seed noise, ``≈`` within it, ``?`` untested (one seed): see the pages' legend."""
    return "?" if comparison.p_value is None else "*" if comparison.significant else "≈"
