"""The report's first screen: how much of the gap from noise to real images each row's images close.

A data-free benchmark asks one question first: do these images calibrate as well as real ones? For every
row calibrated on neither noise nor real images, the gap closed is (row - noise) / (real - noise), with
``noise`` and ``real`` the rows that differ from it only in their images (same calibrator, protocol and
quantizer profile) where the run has them, else the ``real`` and ``noise`` baseline rows
(docs/results.md, What the run shows). The row is also tested against its ``real`` reference over seeds.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reports.aggregate import bits_order, seed_values
from reports.significance import Comparison, compare, verdict

NOISE, REAL = "noise", "real"  # the generators (and the baseline rows) that bound the gap
MIN_GAP = 1.0  # points of the metric: the share of a smaller gap is noise, one image of the digits set is 0.19
GROUPING = ("task", "model", "subset", "bits", "label", "generator", "calibrator", "protocol", "profile")


@dataclass(frozen=True)
class GapClosure:
    """One row at one bit width: its mean, its references and how much of their gap it closes."""

    task: str
    model: str
    subset: str
    bits: str
    label: str
    mean: float
    noise: str  # the reference rows' labels
    real: str
    closed: float | None  # percent of the noise -> real gap; None where real images are not MIN_GAP above noise
    versus_real: Comparison


def gap_closures(frame: pd.DataFrame, metric: str) -> list[GapClosure]:
    """``frame``: records_frame rows of one task; ``metric``: its primary metric, without the ``metric.`` prefix."""
    measured = frame.reindex(columns=[*frame.columns, *(c for c in GROUPING if c not in frame.columns)])
    measured = measured.dropna(subset=[f"metric.{metric}"])
    measured = measured[measured["bits"] != "fp"]
    if measured.empty:
        return []
    rows = measured.groupby(list(GROUPING), dropna=False)[f"metric.{metric}"].mean().reset_index(name="mean")
    seeds = seed_values(measured, f"metric.{metric}")
    closures = []
    for _, section in rows.groupby(["task", "model", "subset", "bits"], sort=False):
        means = dict(zip(section["label"], section["mean"]))
        for row in section.itertuples(index=False):
            if row.generator in (NOISE, REAL):
                continue
            noise, real = _references(section, row)
            if noise is None or real is None:
                continue
            gap = means[real] - means[noise]
            closed = 100 * (row.mean - means[noise]) / gap if gap >= MIN_GAP else None
            key = (row.model, row.subset)
            closures.append(GapClosure(
                task=row.task, model=row.model, subset=row.subset, bits=row.bits, label=row.label, mean=row.mean,
                noise=noise, real=real, closed=closed,
                versus_real=compare(seeds[(*key, row.label, row.bits)], seeds[(*key, real, row.bits)], "real")))
    return sorted(closures, key=lambda c: (c.task, c.model, c.subset, bits_order(c.bits), c.real,
                                           -(c.closed if c.closed is not None else float("-inf")), c.label))


def _references(section: pd.DataFrame, row) -> tuple[str | None, str | None]:
    """The noise and real rows calibrated as ``row`` is, else the baseline rows named ``noise`` and ``real``."""
    alike = section[(section["calibrator"] == row.calibrator) & (section["protocol"] == row.protocol)
                    & (section["profile"].astype(object).fillna("") == ("" if pd.isna(row.profile) else row.profile))]
    found = {generator: list(alike.loc[alike["generator"] == generator, "label"]) for generator in (NOISE, REAL)}
    if len(found[NOISE]) == 1 and len(found[REAL]) == 1:
        return found[NOISE][0], found[REAL][0]
    labels = set(section["label"])
    return (NOISE if NOISE in labels else None), (REAL if REAL in labels else None)


def closure_table(closures: list[GapClosure]) -> pd.DataFrame:
    """Text pivot for the terminal: rows (model, images), columns bits, cells ``closed % (vs real ±d mark)``."""
    rows = [{"model": c.model, "images, calibrated": c.label, "bits": c.bits,
             "text": f"{'gap < 1' if c.closed is None else f'{c.closed:.0f} %'} "
                     f"(vs real {c.versus_real.difference:+.2f} {verdict(c.versus_real)})"}
            for c in closures]
    table = pd.DataFrame(rows).pivot(index=["model", "images, calibrated"], columns="bits", values="text")
    return table[sorted(table.columns, key=bits_order)].fillna("")
