"""Options dataclasses: ``key=value`` overrides from the command line, and dicts for records.

Every value is checked against the field's declared type and its declared :class:`Range` (field
metadata, see :func:`ranged` and its shorthands :func:`at_least`, :func:`positive`, :func:`probability`,
:func:`percent`) before any cell runs, so a bad value is one line naming the option, never an
error record per cell (docs/plugins.md, Options).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

import yaml

from harness.errors import HarnessError


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric option accepts, declared with the option (as its type is) and checked before
    any cell runs: bounds (None: unbounded), each inclusive unless ``open``. For a list or tuple option
    every element must lie in it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"a value {'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"a value {'<' if self.high_open else '<='} {self.high:g}"
        return f"a value in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def ranged(accepted: Range, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose value must lie in ``accepted``: ``percentile: float = percent(99.99)``."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"range": accepted})


def at_least(minimum: float, default: Any) -> Any:
    """A count or a weight: ``num_images: int = at_least(1, 32)``, ``tv_weight: float = at_least(0, 0.05)``."""
    return ranged(Range(low=minimum), default)


def positive(default: Any) -> Any:
    """A learning rate, a scale, a bandwidth: ``> 0``."""
    return ranged(Range(low=0, low_open=True), default)


def probability(default: Any) -> Any:
    """A probability or a share: ``[0, 1]``."""
    return ranged(Range(low=0, high=1), default)


def percent(default: Any) -> Any:
    """A percentile: ``(0, 100]`` (0 would clip every value away)."""
    return ranged(Range(low=0, high=100, low_open=True), default)


def parse_assignments(items: list[str], what: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; values are read as YAML scalars."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarnessError(f"malformed {what} option {item!r}; expected KEY=VALUE")
        parsed[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return parsed


def build_options(options_class: type, overrides: dict[str, Any], plugin: str, owner: str) -> Any:
    """Instantiate ``options_class`` with the overrides; ``plugin.key`` applies to that plugin only."""
    overrides = {
        key.partition(".")[2] if "." in key else key: value
        for key, value in overrides.items()
        if "." not in key or key.partition(".")[0] == plugin
    }
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        accepted = ", ".join(sorted(fields)) or "none"
        raise HarnessError(f"{owner} has no option {unknown[0]!r}; accepted: {accepted}")
    hints = typing.get_type_hints(options_class)
    checked = {key: checked_value(value, hints[key], fields[key].metadata.get("range"), f"{owner} option {key}")
               for key, value in overrides.items()}
    try:
        return options_class(**checked)
    except (TypeError, ValueError) as error:
        raise HarnessError(f"invalid option for {owner}: {error}") from error


def checked_value(value: Any, annotation: Any, accepted: Range | None, what: str) -> Any:
    """``value`` as ``annotation`` asks (ints widen to floats, lists become tuples) and within ``accepted``,
    or a one-line error naming the option, the value and what is accepted."""
    try:
        result = _coerce(value, annotation)
    except _Mismatch:
        raise HarnessError(f"{what}={_show(value)} is not {_describe(annotation)}") from None
    numbers = result if isinstance(result, (list, tuple)) else () if result is None else (result,)
    if accepted is not None and not all(number in accepted for number in numbers):
        each = "each element " if isinstance(result, (list, tuple)) else ""
        raise HarnessError(f"{what}={_show(value)} is out of range; accepted: {each}{accepted}")
    return result


class _Mismatch(Exception):
    pass


_EXACT = (type(None), bool, int, str)


def _coerce(value: Any, annotation: Any) -> Any:
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in arguments:
            try:
                return _coerce(value, option)
            except _Mismatch:
                continue
        raise _Mismatch
    if annotation in _EXACT:  # None, bool, int, str: the value as it is (a bool is no int)
        if isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)):
            return value
        raise _Mismatch
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in arguments):
            return value
        raise _Mismatch
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_coerce(item, arguments[0]) for item in value)
        if len(value) != len(arguments):
            raise _Mismatch
        return tuple(_coerce(item, kind) for item, kind in zip(value, arguments))
    return value  # a type this checker does not know: the options class's own checks apply


def _describe(annotation: Any) -> str:
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in arguments)
    if origin is Literal:
        return "one of " + ", ".join(map(str, arguments))
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return f"a list of {_describe(arguments[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(arguments)} ({', '.join(_describe(a) for a in arguments)})"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def options_dict(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}
