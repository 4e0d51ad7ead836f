"""docs/methods.md matches the code: every option table's defaults are the Options dataclasses' defaults,
every option of the project's generators and calibrators is documented, every method is listed."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness.plugin.registry import CALIBRATORS, GENERATORS, METHODS, TUNERS

METHODS_DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
PROJECT_PACKAGES = ("harness", "methods")  # outside packages document themselves
WORDS = {"true": True, "false": False, "None": None}


def tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(header cells, body rows) of every Markdown table."""
    for block in re.findall(r"(?:^\|.*\|\n)+", text, re.M):
        rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in block.strip().splitlines()]
        yield rows[0], rows[2:]


def names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def split_top_level(text: str) -> list[str]:
    """``a, (b, c), d`` -> ``["a", "(b, c)", "d"]``."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return parts + [current.strip()]


def value(text: str) -> Any:
    """A documented default as Python: ``None (0.20 ViT/DeiT, ...)`` -> None, ``(15, 30)`` -> (15, 30)."""
    text = text.replace("`", "")
    if not text.startswith("(") and " (" in text:
        text = text.split(" (", 1)[0]
    if text in WORDS:
        return WORDS[text]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


KINDS = ("generator", "calibrator", "tuner")


def documented_defaults() -> dict[tuple[str, str], Any]:
    """(plugin, option) -> default, from every option table: ``| plugin | option | default |`` or
    ``| `name` option | default |`` (several names share the rows), or ``| `name` KIND option | default |``
    where plugins of two kinds share a name (the generator and the tuner ``maskaq``): then the plugin is
    ``name KIND``."""
    found = {}
    for header, rows in tables(METHODS_DOC.read_text()):
        if header[0] == "plugin" and header[1:3] == ["option", "default"]:
            entries = [(names(row[0]), row[1], row[2]) for row in rows]
        elif header[0].endswith(" option") and header[1] == "default":
            kind = header[0].removesuffix(" option").rsplit(" ", 1)[-1]
            entries = [([f"{name} {kind}" if kind in KINDS else name for name in names(header[0])], row[0], row[1])
                       for row in rows]
        else:
            continue
        for plugins, option_cell, default_cell in entries:
            options = names(option_cell)
            if not options:  # a row about something other than an option (the repq table's "weights")
                continue
            defaults = [value(v) for v in split_top_level(default_cell)] if len(options) > 1 else [value(default_cell)]
            assert len(defaults) == len(options), f"{option_cell}: {len(options)} options, {len(defaults)} defaults"
            for plugin in plugins:
                found.update({(plugin, option): default for option, default in zip(options, defaults)})
    return found


def project_plugins() -> dict[str, type]:
    """Generators, calibrators and tuners of this repository by name, or by ``name KIND`` where two kinds share
    a name (their tables are headed ``| `name` KIND option | default |``)."""
    by_name: dict[str, list[tuple[str, type]]] = {}
    for kind, registry in zip(KINDS, (GENERATORS, CALIBRATORS, TUNERS)):
        for name, cls in registry.items():
            if cls.__module__.split(".")[0] in PROJECT_PACKAGES:
                by_name.setdefault(name, []).append((kind, cls))
    return {name if len(kinds) == 1 else f"{name} {kind}": cls
            for name, kinds in by_name.items() for kind, cls in kinds}


def same(documented: Any, actual: Any) -> bool:
    if isinstance(actual, (list, tuple)):
        return isinstance(documented, (list, tuple)) and tuple(documented) == tuple(actual)
    return documented == actual and type(documented) is type(actual) or (
        isinstance(actual, float) and isinstance(documented, int) and documented == actual)


DOCUMENTED = documented_defaults()


@pytest.mark.parametrize("plugin, option", sorted(DOCUMENTED))
def test_documented_default_is_the_options_default(plugin, option):
    plugins = project_plugins()
    assert plugin in plugins, f"docs/methods.md documents options of {plugin!r}, which is not a registered plugin"
    defaults = plugins[plugin].Options()
    assert hasattr(defaults, option), f"docs/methods.md documents {plugin}.{option}, which its Options lacks"
    actual = getattr(defaults, option)
    assert same(DOCUMENTED[plugin, option], actual), \
        f"docs/methods.md gives {plugin}.{option} = {DOCUMENTED[plugin, option]!r}, the code {actual!r}"


@pytest.mark.parametrize("plugin", sorted(project_plugins()))
def test_every_option_is_documented(plugin):
    fields = [field.name for field in dataclasses.fields(project_plugins()[plugin].Options)]
    missing = [name for name in fields if (plugin, name) not in DOCUMENTED]
    assert not missing, f"docs/methods.md has no row for {plugin}'s options {missing} (an option table per plugin)"


def test_every_method_is_listed_with_its_parts():
    (rows,) = [rows for header, rows in tables(METHODS_DOC.read_text())
               if header[:3] == ["method", "generator", "calibrator"]]
    # method, generator, calibrator, tuner (`none`, without backticks, where the method only calibrates)
    listed = {names(row[0])[0]: (names(row[1])[0], names(row[2])[0], (names(row[3]) or [None])[0]) for row in rows}
    ours = set(project_plugins().values())
    own = {name: (spec.generator, spec.calibrator, spec.tuner) for name, spec in METHODS.items()
           if GENERATORS.get(spec.generator) in ours and CALIBRATORS.get(spec.calibrator) in ours}
    assert listed == own
