"""The published figures shipped as ``reports/published.csv``, and their lookup.

Each row is one figure: (task, model, method, bits, metric) in the harness's own names, its value,
where it comes from and whether it is ``verified`` (the number was read in the cited source: a
repository file at a commit, or a URL) or ``recalled`` (from secondary notes, never checked).
Recalled figures are kept apart: ``lookup`` and ``fp`` return them only when asked to, so no gap is
computed against them by default; ``recalled`` returns them for a report to show as unverified.
See docs/results.md, "Published figures".
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
    verified: str  # "verified" or "recalled"
    notes: str

    @property
    def verified_figure(self) -> bool:
        """True when the number was read in its cited source, False for a recalled figure."""
        return self.verified == "verified"


class PublishedTable:
    """Exact-key lookup of published figures; a key may appear once, so every cell cites one source.

    ``include_recalled`` False (the default): ``lookup`` and ``fp`` return verified figures only, and
    recalled ones are reachable through ``recalled`` alone, so nothing compares a measurement with them.
    """

    def __init__(self, rows: list[dict[str, Any]], include_recalled: bool = False) -> None:
        self.include_recalled = include_recalled
        self._figures: dict[tuple[str, ...], PublishedFigure] = {}
        for row in rows:
            key = tuple(str(row[k]) for k in KEY)
            if key in self._figures:
                raise ValueError(f"published figure {key} is listed twice")
            if row["verified"] not in VERIFIED:
                raise ValueError(f"published figure {key}: verified must be one of {VERIFIED}, got {row['verified']!r}")
            self._figures[key] = PublishedFigure(float(row["value"]), row["source"], row["verified"], row["notes"])

    def lookup(self, task: str, model: str, method: str, bits: str, metric: str) -> PublishedFigure | None:
        """The figure to compare a measurement with: verified only, unless the table includes recalled ones."""
        figure = self._figures.get((task, model, method, bits, metric))
        if figure is None or figure.verified_figure or self.include_recalled:
            return figure
        return None

    def fp(self, task: str, model: str, metric: str) -> PublishedFigure | None:
        """The published FP figure of a model, under the same rule as ``lookup``."""
        return self.lookup(task, model, FP_METHOD, "fp", metric)

    def recalled(self, task: str, model: str, method: str, bits: str, metric: str) -> PublishedFigure | None:
        """A recalled (unverified) figure for the key, whatever ``include_recalled``; None if the key is verified."""
        figure = self._figures.get((task, model, method, bits, metric))
        return figure if figure is not None and not figure.verified_figure else None

    def metrics(self, task: str) -> set[str]:
        """Metrics with a published figure for the task, verified or recalled (names only, no values)."""
        return {key[4] for key in self._figures if key[0] == task}


def load_published(path: Path | None = None, include_recalled: bool = False) -> PublishedTable:
    """Read the CSV; bits are rewritten in the records' spelling (``mp8`` -> ``mp8a8``), empty values dropped.

    Recalled rows are loaded but kept out of ``lookup`` and ``fp`` unless ``include_recalled``.
    """
    source = path or resources.files("reports").joinpath("published.csv")
    with source.open() as handle:
        table = pd.read_csv(handle, dtype=str, keep_default_na=False)
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{source}: missing columns {sorted(missing)}")
    table = table[table["value"].str.strip() != ""]
    table["bits"] = [str(parse_bits(bits)) for bits in table["bits"]]
    return PublishedTable(table.to_dict("records"), include_recalled=include_recalled)
