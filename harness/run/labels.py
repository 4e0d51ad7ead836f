"""Leaderboard row names, kept as fields: what a row is, and whether a paper's figure applies to it.

The label string a record stores is made from a :class:`RowLabel`; a report that needs to know
whether a row is a method's own pipeline asks the fields (rebuilt from the record's configuration),
never the string (docs/results.md, Leaderboard rows).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from harness.plugin.registry import METHODS
from harness.run.grid import Cell
from harness.store.keys import EXECUTION_ONLY_TASK_OPTIONS

NOT_TUNED = "calibration only"  # the label of a cell without the tuner its method's protocol has


@dataclass(frozen=True)
class RowLabel:
    """A configuration's name: the method, and everything of it that differs from the method's defaults."""

    method: str
    pair: tuple[str, str] | None = None  # (generator, calibrator) when not the method's own
    tuning: str | None = None  # the tuner when not the method's own; NOT_TUNED when the method's own tunes
    quantizer: tuple[str, ...] = ()  # the profile's name when not the default, then changed settings
    options: tuple[str, ...] = ()  # changed generator, calibrator and task options, ``key=value``

    def __str__(self) -> str:
        text = self.method
        if self.pair is not None:
            text += f" ({self.pair[0]}+{self.pair[1]})"
        if self.tuning is not None:
            text += f" → {self.tuning}"
        if self.quantizer:
            text += f" [{', '.join(self.quantizer)}]"
        return text + (f" {{{', '.join(self.options)}}}" if self.options else "")

    @property
    def published_method(self) -> str | None:
        """The method whose published figures apply: its own pair and options; the quantizer's placement
        and settings may differ (a published row names its profile). None for any other configuration."""
        return self.method if self.pair is None and self.tuning is None and not self.options else None


def row_label(cell: Cell) -> RowLabel:
    """The cell's row: an FP cell depends on neither the pair nor the quantizer, so its label names neither."""
    task_options = tuple(f"{key}={value}" for key, value in changed_options(cell.task_options).items()
                         if key not in EXECUTION_ONLY_TASK_OPTIONS)
    if cell.bits.is_fp:
        return RowLabel(cell.method, options=task_options)
    method = METHODS.get(cell.method) if cell.method in METHODS else None  # a crossed pair names itself
    own_pair = (method.generator, method.calibrator) if method else (cell.generator, cell.calibrator)
    own_tuner = method.tuner if method else None
    quantizer = changed_options(cell.quant)
    profile = quantizer.pop("profile", None)  # the profile alone reads as its name, as published rows do
    return RowLabel(
        cell.method,
        pair=None if (cell.generator, cell.calibrator) == own_pair else (cell.generator, cell.calibrator),
        tuning=None if cell.tuner == own_tuner else cell.tuner or NOT_TUNED,
        quantizer=(profile,) * (profile is not None) + tuple(f"{key}={value}" for key, value in quantizer.items()),
        options=tuple(f"{key}={value}" for options in (cell.generator_options, cell.calibrator_options, cell.tuner_options)
                      for key, value in changed_options(options).items()) + task_options)


def changed_options(options: Any) -> dict[str, Any]:
    """The fields of a plugin's options that differ from the plugin's defaults."""
    changed = {}
    for field_ in dataclasses.fields(options) if dataclasses.is_dataclass(options) else ():
        default = field_.default
        if default is dataclasses.MISSING and field_.default_factory is not dataclasses.MISSING:
            default = field_.default_factory()
        value = getattr(options, field_.name)
        if default is dataclasses.MISSING or value != default:
            changed[field_.name] = value
    return changed
