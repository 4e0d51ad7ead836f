"""The published figures of spec ``published.md``, shipped as ``reports/published.csv``, and their lookup.

Each row is one figure: (task, model, method, bits, metric) in the harness's own names, its value,
where it comes from and whether it was ``verified`` (authors' README or abstract) or ``recalled``
(secondary notes, to be checked against the paper).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from harness.bits import parse_bits

KEY = ("task", "model", "method", "bits", "metric")
COLUMNS = (*KEY, "value", "source", "verified", "notes")
VERIFIED = ("verified", "recalled")
FP_METHOD = "fp"


@dataclass(frozen=True)
class PublishedFigure:
    value: float
    source: str
    verified: str
    notes: str


class PublishedTable:
    """Exact-key lookup of published figures; a key may appear once, so every cell cites one source."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self._figures: dict[tuple[str, ...], PublishedFigure] = {}
        for row in rows:
            key = tuple(str(row[k]) for k in KEY)
            if key in self._figures:
                raise ValueError(f"published figure {key} is listed twice")
            if row["verified"] not in VERIFIED:
                raise ValueError(f"published figure {key}: verified must be one of {VERIFIED}, got {row['verified']!r}")
            self._figures[key] = PublishedFigure(float(row["value"]), row["source"], row["verified"], row["notes"])

    def lookup(self, task: str, model: str, method: str, bits: str, metric: str) -> PublishedFigure | None:
        return self._figures.get((task, model, method, bits, metric))

    def fp(self, task: str, model: str, metric: str) -> PublishedFigure | None:
        return self.lookup(task, model, FP_METHOD, "fp", metric)

    def metrics(self, task: str) -> set[str]:
        return {key[4] for key in self._figures if key[0] == task}


def load_published(path: Path | None = None) -> PublishedTable:
    """Read the CSV; bits are rewritten in the records' spelling (``mp8`` -> ``mp8a8``), empty values dropped."""
    source = path or resources.files("reports").joinpath("published.csv")
    with source.open() as handle:
        table = pd.read_csv(handle, dtype=str, keep_default_na=False)
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{source}: missing columns {sorted(missing)}")
    table = table[table["value"].str.strip() != ""]
    table["bits"] = [str(parse_bits(bits)) for bits in table["bits"]]
    return PublishedTable(table.to_dict("records"))


def comparable_method(label: str, method: str) -> str | None:
    """The method whose published figures apply to a leaderboard row, or None.

    A row whose generator or calibrator was overridden (label ``psaq (psaq+ranking)``, see
    ``harness.runner._label``) is a different pipeline, so the method's published figure does not
    apply; a quantizer-profile suffix (``psaq [psaq]``) keeps the method's own pipeline.
    """
    return method if label == method or label.startswith(f"{method} [") else None
