"""Declared shapes of what the harness reads back from disk (records, FP metrics, calibration-set headers, evaluation
cache entries; docs/results.md, Records are validated on read, and Caches are validated on read): a file is used only if every declared
part has its shape, and a bad one is named by the first part that is wrong, in one line, instead of failing later
in whatever code reads that part.

A shape is a function ``(value, where) -> why it is not this shape, or None``; ``where`` names the part
(``timing_s.generate``; empty for a whole document), so the message says what to look at.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

Shape = Callable[[Any, str], "str | None"]
MISSING = object()  # a declared part that is absent


def shown(value: Any) -> str:
    """A value as a message shows it: short, ``missing`` or ``null`` where there is none."""
    return "missing" if value is MISSING else "null" if value is None else f"{value!r}"[:40]


def _kind(accepted: type, expected: str) -> Shape:
    def check(value: Any, where: str) -> str | None:
        if isinstance(value, accepted) and (accepted is bool or not isinstance(value, bool)):  # a bool is no int
            return None
        return f"{where} is {shown(value)}, expected {expected}"
    return check


text = _kind(str, "a string")
boolean = _kind(bool, "true or false")
integer = _kind(int, "an integer")


def finite_number(value: Any, where: str) -> str | None:
    """An int or float that is neither NaN nor infinite (a bool is no number)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return None
    return f"{where} is {shown(value)}, expected a finite number"


def number_within(low: float, high: float) -> Shape:
    """A finite number in ``[low, high]``: a metric outside what a task can produce is no measurement."""
    def check(value: Any, where: str) -> str | None:
        if (problem := finite_number(value, where)) is not None:
            return problem
        return None if low <= value <= high else f"{where} is {shown(value)}, expected a number in [{low:g}, {high:g}]"
    return check


def nullable(shape: Shape) -> Shape:
    """``shape`` or JSON null: a part the writer leaves empty on purpose (a prior without classes)."""
    def check(value: Any, where: str) -> str | None:
        return None if value is None else shape(value, where)
    return check


def list_of(items: Shape) -> Shape:
    def check(value: Any, where: str) -> str | None:
        if not isinstance(value, list):
            return f"{where} is {shown(value)}, expected a list"
        return next((problem for index, item in enumerate(value) if (problem := items(item, f"{where}[{index}]"))), None)
    return check


def mapping_of(values: Shape) -> Shape:
    """A JSON object whose every value has the shape ``values`` (names free: metric names, stages, packages)."""
    def check(value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{where} is {shown(value)}, expected a mapping"
        return next((problem for key, item in value.items() if (problem := values(item, _part(where, key)))), None)
    return check


def fields(shapes: Mapping[str, Shape], required: tuple[str, ...] = ()) -> Shape:
    """A JSON object whose named parts, where present (always for ``required``), have their shapes;
    other parts are not read by the harness and stay free."""
    def check(value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{where} is {shown(value)}, expected a mapping"
        for name, shape in shapes.items():
            part = value.get(name, MISSING)
            if part is MISSING and name not in required:
                continue
            if (problem := shape(part, _part(where, name))) is not None:
                return problem
        return None
    return check


def _part(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def read_json(path: Path) -> tuple[Any, str | None]:
    """A JSON file's content, or why it cannot be read: a torn or edited file is named, never fatal."""
    try:
        with open(path) as handle:
            return json.load(handle), None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "not valid JSON (a torn or edited file)"
    except OSError as error:
        return None, f"unreadable ({error.strerror or error})"
