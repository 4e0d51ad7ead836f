"""The published figures shipped as ``reports/published.csv``, and their lookup.

Each row is one figure: (task, model, method, bits, metric, protocol) in the harness's own names, its
value, where it comes from and whether it is ``verified`` (the number was read in the cited source: a
repository file at a commit, or a URL) or ``recalled`` (from secondary notes, never checked).
The protocol is ``calibration only`` or ``fine-tuned``, with the epochs where the source gives them
(``fine-tuned (200 epochs)``): one method's figure for one setting may differ by protocol (PSAQ-ViT
DeiT-S W4A8 is 73.23 calibrated only in its README, 76.56 fine-tuned in MaskAQ's table), so the
protocol is part of the key and a measurement is compared with the figure of its own protocol.
Recalled figures are kept apart: ``lookup`` and ``fp`` return them only when asked to, so no gap is
computed against them by default; ``recalled`` returns them for a report to show as unverified.
See docs/results.md, "Published figures".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from harness.quant.bits import parse_bits

FIGURE = ("task", "model", "method", "bits", "metric")  # what was measured; the protocol says how
KEY = (*FIGURE, "protocol")
COLUMNS = (*KEY, "value", "source", "verified", "notes")
VERIFIED = ("verified", "recalled")
FP_METHOD = "fp"
CALIBRATION_ONLY = "calibration only"
FINE_TUNED = "fine-tuned"
PROTOCOL_FORMS = (CALIBRATION_ONLY, FINE_TUNED, "fine-tuned (N epochs)")
_PROTOCOL = re.compile(r"calibration only|fine-tuned(?: \((?P<epochs>[1-9][0-9]*) epochs?\))?")


def parse_protocol(text: Any) -> str:
    """A ledger protocol in its one spelling (``fine-tuned (1 epoch)``, ``fine-tuned (200 epochs)``);
    ValueError naming the accepted forms for anything else, an empty value included."""
    match = _PROTOCOL.fullmatch(str(text).strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"protocol {text!r} is not one of {', '.join(repr(form) for form in PROTOCOL_FORMS)}")
    epochs = match["epochs"]
    if epochs is None:
        return match[0]
    return f"{FINE_TUNED} ({epochs} epoch{'s' * (epochs != '1')})"


def ledger_protocol(row_protocol: str) -> str:
    """The ledger protocol a leaderboard row's protocol asks for (reports.aggregate.protocol): calibration
    only for ``calibration only`` and FP rows (``""``), any fine-tuned figure for ``fine-tuned: TUNER``."""
    return FINE_TUNED if row_protocol.startswith(FINE_TUNED) else CALIBRATION_ONLY


def _tuned(protocol: str) -> bool:
    return protocol.startswith(FINE_TUNED)


@dataclass(frozen=True)
class PublishedFigure:
    value: float
    source: str
    verified: str  # "verified" or "recalled"
    notes: str
    protocol: str = CALIBRATION_ONLY  # "calibration only", "fine-tuned" or "fine-tuned (N epochs)"

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
            figure_key = tuple(str(row[k]) for k in FIGURE)
            where = f"published figure {figure_key}" + (f" (line {row['line']})" if "line" in row else "")
            try:
                protocol = parse_protocol(row.get("protocol"))
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            key = (*figure_key, protocol)
            if key in self._figures:
                raise ValueError(f"{where}, {protocol}: listed twice")
            if row["verified"] not in VERIFIED:
                raise ValueError(f"{where}: verified must be one of {VERIFIED}, got {row['verified']!r}")
            self._figures[key] = PublishedFigure(float(row["value"]), row["source"], row["verified"], row["notes"],
                                                 protocol)

    def _find(self, key: tuple[str, ...], protocol: str) -> PublishedFigure | None:
        """The figure of the key under ``protocol``; a bare ``fine-tuned`` also takes the key's one fine-tuned
        figure whatever its epochs (none when the ledger has several: the query cannot choose)."""
        protocol = parse_protocol(protocol)
        figure = self._figures.get((*key, protocol))
        if figure is not None or protocol != FINE_TUNED:
            return figure
        tuned = [figure for (*other, kind), figure in self._figures.items() if tuple(other) == key and _tuned(kind)]
        return tuned[0] if len(tuned) == 1 else None

    def lookup(self, task: str, model: str, method: str, bits: str, metric: str, *,
               protocol: str = CALIBRATION_ONLY) -> PublishedFigure | None:
        """The figure to compare a measurement of ``protocol`` with: verified only, unless the table
        includes recalled ones."""
        figure = self._find((task, model, method, bits, metric), protocol)
        if figure is None or figure.verified_figure or self.include_recalled:
            return figure
        return None

    def fp(self, task: str, model: str, metric: str) -> PublishedFigure | None:
        """The published FP figure of a model (no quantized model, so calibration only), as ``lookup``."""
        return self.lookup(task, model, FP_METHOD, "fp", metric)

    def recalled(self, task: str, model: str, method: str, bits: str, metric: str, *,
                 protocol: str = CALIBRATION_ONLY) -> PublishedFigure | None:
        """A recalled (unverified) figure for the key, whatever ``include_recalled``; None if the key is verified."""
        figure = self._find((task, model, method, bits, metric), protocol)
        return figure if figure is not None and not figure.verified_figure else None

    def fine_tuned(self, task: str, model: str, method: str, bits: str, metric: str) -> list[PublishedFigure]:
        """Every fine-tuned figure of the key, verified and recalled (``verified`` tells them apart), for a
        report to show apart from the leaderboard's cells and without a gap."""
        key = (task, model, method, bits, metric)
        return [figure for (*other, protocol), figure in sorted(self._figures.items())
                if tuple(other) == key and _tuned(protocol)]

    def metrics(self, task: str) -> set[str]:
        """Metrics with a published figure for the task, verified or recalled (names only, no values)."""
        return {key[4] for key in self._figures if key[0] == task}


def load_published(path: Path | None = None, include_recalled: bool = False) -> PublishedTable:
    """Read the CSV; bits are rewritten in the records' spelling (``mp8`` -> ``mp8a8``), empty values dropped.

    Recalled rows are loaded but kept out of ``lookup`` and ``fp`` unless ``include_recalled``. Every row
    names its protocol in one of ``PROTOCOL_FORMS``; a missing or unknown one is a ValueError naming the row.
    """
    source = path or resources.files("reports").joinpath("published.csv")
    with source.open() as handle:
        table = pd.read_csv(handle, dtype=str, keep_default_na=False)
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{source}: missing columns {sorted(missing)}")
    table["line"] = table.index + 2  # the header is line 1
    table = table[table["value"].str.strip() != ""]
    table["bits"] = [str(parse_bits(bits)) for bits in table["bits"]]
    try:
        return PublishedTable(table.to_dict("records"), include_recalled=include_recalled)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
