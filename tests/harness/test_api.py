"""harness.api is the plugins' one door into the harness: the contract a plugin implements, and named namespaces
of building blocks beneath it. Every listed name imports, the plugins of this repository use nothing else, and
docs/plugins.md (The plugin API) lists every name."""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import harness.api

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_FOLDERS = ("methods", "tasks")
NAMESPACES = ("harness.api", *(f"harness.api.{path.stem}" for path in sorted((ROOT / "harness" / "api").glob("*.py"))
                               if path.stem != "__init__"))
CONTRACT_LIMIT = 50  # what a plugin implements and uses, read in one sitting (docs/plugins.md, The plugin API)


def harness_imports(path: Path) -> dict[str, set[str]]:
    """Harness module -> names a file imports from it (``import harness.x`` counts with no names)."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "harness":
            found.setdefault(node.module, set()).update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "harness":
                    found.setdefault(alias.name, set())
    return found


def plugin_files() -> list[Path]:
    return sorted(path for folder in PLUGIN_FOLDERS for path in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_listed_name_imports_and_star_gives_exactly_them(namespace):
    module = importlib.import_module(namespace)
    assert len(set(module.__all__)) == len(module.__all__), "a name listed twice"
    assert [name for name in module.__all__ if not hasattr(module, name)] == []
    found: dict = {}
    exec(f"from {namespace} import *", found)
    assert set(found) - {"__builtins__"} == set(module.__all__)


def test_the_contract_is_short_and_no_name_is_in_two_namespaces():
    assert len(harness.api.__all__) <= CONTRACT_LIMIT
    names = [name for namespace in NAMESPACES for name in importlib.import_module(namespace).__all__]
    assert len(names) == len(set(names)), "a name in two namespaces"


def test_plugins_import_the_harness_through_the_api_only():
    offenders = {}
    for path in plugin_files():
        other = sorted(set(harness_imports(path)) - set(NAMESPACES))
        if other:
            offenders[path.relative_to(ROOT).as_posix()] = other
    assert not offenders, ("plugins import from harness.api and its namespaces only (docs/plugins.md, The plugin API); "
                           f"these import other harness modules: {offenders}")


def test_plugins_import_only_listed_names():
    unlisted = {f"{path.relative_to(ROOT).as_posix()} ({module})": sorted(names - set(importlib.import_module(module).__all__))
                for path in plugin_files() for module, names in harness_imports(path).items()
                if module in NAMESPACES and names - set(importlib.import_module(module).__all__)}
    assert not unlisted, f"names imported but not in the namespace's __all__: {unlisted}"


def test_plugins_leave_the_conformance_kit_to_their_tests():
    """The kit runs grids: a plugin importing it would load the runner with the plugin."""
    users = [path.relative_to(ROOT).as_posix() for path in plugin_files() if "harness.api.testing" in harness_imports(path)]
    assert users == []


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_the_api_names_the_objects_of_their_home_modules(namespace):
    """Re-exports, not copies: the digest follows each name to its home module (harness.store.code_version)."""
    module = importlib.import_module(namespace)
    for node in ast.parse(Path(module.__file__).read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            home = importlib.import_module(node.module)
            for alias in node.names:
                assert getattr(module, alias.asname or alias.name) is getattr(home, alias.name)


def test_docs_list_every_name_under_its_namespace():
    section = (ROOT / "docs" / "plugins.md").read_text().split("## The plugin API", 1)[1].split("\n## ", 1)[0]
    rows = {match[0]: set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", match[1]))
            for match in re.findall(r"^\| `(harness\.api[a-z_.]*)` \|(.*)\|$", section, flags=re.MULTILINE)}
    for namespace in NAMESPACES:
        listed = set(importlib.import_module(namespace).__all__)
        assert namespace in rows, f"docs/plugins.md has no row for {namespace}"
        assert listed - rows[namespace] == set(), f"{namespace}: names missing from docs/plugins.md"
        assert rows[namespace] - listed == set(), f"{namespace}: docs/plugins.md lists names it does not export"


def test_importing_the_api_loads_no_scheduler():
    code = ("import sys, harness.api; print(sorted(m for m in ('harness.run.runner', 'harness.run.grid', 'harness.plugin.conformance', "
            "'harness.run.worker', 'harness.run.plan') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert loaded.strip() == "[]"
