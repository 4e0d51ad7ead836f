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


def shown(value: Any, limit: int = 40) -> str:
    """A value as a message shows it: its repr's first ``limit`` characters, ``missing`` or ``null`` where
    there is none. Only those characters are built, so a hostile file's value (a YAML alias bomb, a list
    that holds itself, a megabyte of nesting) costs no more to name than a short one."""
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    pieces: list[str] = []
    try:
        _bounded_repr(value, pieces, limit)
    except _Shown:
        pass
    return "".join(pieces)[:limit]


class _Shown(Exception):
    """Enough characters of a value are built."""


def _bounded_repr(value: Any, pieces: list[str], limit: int) -> None:
    """Append ``repr(value)`` to ``pieces`` piece by piece, stopping (``_Shown``) past ``limit`` characters."""
    def emit(piece: str) -> None:
        pieces.append(piece)
        if sum(map(len, pieces)) > limit:
            raise _Shown

    kind = type(value)
    if kind in (list, tuple):
        emit("[" if kind is list else "(")
        for index, item in enumerate(value):
            emit(", " if index else "")
            _bounded_repr(item, pieces, limit)
        emit(("," if kind is tuple and len(value) == 1 else "") + ("]" if kind is list else ")"))
    elif kind is dict:
        emit("{")
        for index, (key, item) in enumerate(value.items()):
            emit(", " if index else "")
            _bounded_repr(key, pieces, limit)
            emit(": ")
            _bounded_repr(item, pieces, limit)
        emit("}")
    else:
        emit(repr(value[:limit + 1]) if kind is str else repr(value))


def typed(accepted: type, expected: str) -> Shape:
    """A value of type ``accepted`` (a bool is no int), else ``WHERE is VALUE, expected EXPECTED``."""
    def check(value: Any, where: str) -> str | None:
        if isinstance(value, accepted) and (accepted is bool or not isinstance(value, bool)):  # a bool is no int
            return None
        return f"{where} is {shown(value)}, expected {expected}"
    return check


text = typed(str, "a string")
boolean = typed(bool, "true or false")
integer = typed(int, "an integer")


def finite_number(value: Any, where: str) -> str | None:
    """An int or float that is neither NaN nor infinite (a bool is no number; an int of 400 digits is finite,
    and is not handed to ``math.isfinite``, which cannot convert it)."""
    if isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value):
        return None
    return f"{where} is {shown(value)}, expected a finite number"


def number_within(low: float, high: float) -> Shape:
    """A finite number in ``[low, high]``: a metric outside what a task can produce is no measurement."""
    def check(value: Any, where: str) -> str | None:
        if (problem := finite_number(value, where)) is not None:
            return problem
        return None if low <= value <= high else f"{where} is {shown(value)}, expected a number in [{low:g}, {high:g}]"
    return check


def integer_within(low: int, high: int | None = None) -> Shape:
    """An int in ``[low, high]`` (``high`` None: no upper bound); a bool or a float is no integer."""
    def check(value: Any, where: str) -> str | None:
        accepted = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        if isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high):
            return None
        return f"{where} is {shown(value)}, expected {accepted}"
    return check


def one_of(choices: tuple[str, ...]) -> Shape:
    """One of a few names (a runtime, a mode)."""
    def check(value: Any, where: str) -> str | None:
        return None if isinstance(value, str) and value in choices else \
            f"{where} is {shown(value)}, expected one of {', '.join(choices)}"
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
