"""harness.api is the plugins' one door into the harness: every name it lists imports, and the plugins
of this repository use nothing else (docs/plugins.md, The plugin API)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import harness.api

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_FOLDERS = ("methods", "tasks")


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


def test_every_listed_name_imports_and_star_gives_exactly_them():
    assert len(set(harness.api.__all__)) == len(harness.api.__all__), "a name listed twice"
    assert [name for name in harness.api.__all__ if not hasattr(harness.api, name)] == []
    namespace: dict = {}
    exec("from harness.api import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(harness.api.__all__)


def test_plugins_import_the_harness_through_the_api_only():
    offenders = {}
    for path in plugin_files():
        other = sorted(set(harness_imports(path)) - {"harness.api"})
        if other:
            offenders[path.relative_to(ROOT).as_posix()] = other
    assert not offenders, ("plugins import from harness.api only (docs/plugins.md, The plugin API); "
                           f"these import other harness modules: {offenders}")


def test_plugins_import_only_listed_names():
    unlisted = {path.relative_to(ROOT).as_posix(): sorted(names - set(harness.api.__all__))
                for path in plugin_files() for module, names in harness_imports(path).items()
                if module == "harness.api" and names - set(harness.api.__all__)}
    assert not unlisted, f"names imported from harness.api but not in its __all__: {unlisted}"


def test_the_api_names_the_objects_of_their_home_modules():
    """Re-exports, not copies: the digest follows each name to its home module (harness.code_version)."""
    tree = ast.parse(Path(harness.api.__file__).read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            home = importlib.import_module(node.module)
            for alias in node.names:
                assert getattr(harness.api, alias.asname or alias.name) is getattr(home, alias.name)
