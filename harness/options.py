"""Options dataclasses: ``key=value`` overrides from the command line, and dicts for records."""
from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from harness.errors import HarnessError


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
    fields = {f.name for f in dataclasses.fields(options_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        accepted = ", ".join(sorted(fields)) or "none"
        raise HarnessError(f"{owner} has no option {unknown[0]!r}; accepted: {accepted}")
    try:
        return options_class(**overrides)
    except (TypeError, ValueError) as error:
        raise HarnessError(f"invalid option for {owner}: {error}") from error


def options_dict(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}
