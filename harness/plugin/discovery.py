"""Plugin discovery: every folder under ``methods/`` and ``tasks/``, the core's own calibrators and
every entry point in the ``dfq_harness.methods`` / ``dfq_harness.tasks`` groups, imported once.

Plugins are imported by name at the first registry lookup, never by an import statement: this module
names no plugin module in its imports, so registries and the modules plugins build on (harness.plugin.method,
harness.plugin.task) never depend on a plugin, and plugins may import them freely (no import cycle).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from harness.errors import HarnessError
from harness.store.paths import PROJECT_ROOT

ENTRY_POINT_GROUPS = ("dfq_harness.methods", "dfq_harness.tasks")
PLUGIN_PACKAGES = ("methods", "tasks")  # each sub-folder is a plugin
CORE_PLUGIN_MODULES = ("harness.plugin.calibrators",)  # the core's range calibrators (min-max, percentile, OMSE)
# the top-level packages the dfq-harness distribution installs beside harness (docs/plugins.md, Package layout)
SIBLING_PACKAGES = ("methods", "tasks", "reports")

_discovered = False
_discovering = False
_observers: list[Callable[[], Callable[[], None]]] = []


def observe_discovery(observer: Callable[[], Callable[[], None]]) -> None:
    """``observer()`` runs before discovery imports the first plugin, and what it returns after the last
    one registered (harness.entry.listing: the source's digest before, the listing cache written after)."""
    if observer not in _observers:
        _observers.append(observer)


def discover_plugins() -> None:
    """Import every plugin folder and entry point once; a broken plugin names itself."""
    global _discovered, _discovering
    if _discovered:
        return
    _discovered = True
    check_sibling_packages()
    finishers = [observer() for observer in _observers]
    _discovering = True
    try:
        for module_name in CORE_PLUGIN_MODULES:
            importlib.import_module(module_name)
        for package_name in PLUGIN_PACKAGES:
            package = importlib.import_module(package_name)
            for info in pkgutil.iter_modules(package.__path__):
                if info.ispkg:
                    _import_plugin(f"{package_name}.{info.name}")
        for group in ENTRY_POINT_GROUPS:
            for entry in entry_points(group=group):
                _import_plugin(entry.value, loader=entry.load)
    finally:
        _discovering = False
    for finish in finishers:
        finish()


def discovered() -> bool:
    """Whether discovery has run (or is running) in this process."""
    return _discovered


def discovering() -> bool:
    """Whether discovery is importing plugins now: what registers then is what the source holds."""
    return _discovering


def check_sibling_packages() -> None:
    """``methods``, ``tasks`` and ``reports`` are generic names: another installed package of one of these
    names, earlier on ``sys.path``, would be imported in place of the harness's own folder. Found before
    any plugin is imported, it is one clear error rather than missing plugins or a strange traceback."""
    for name in SIBLING_PACKAGES:
        spec = importlib.util.find_spec(name)
        locations = [Path(location).resolve() for location in (spec.submodule_search_locations or [])] if spec else []
        if PROJECT_ROOT / name not in locations:
            found = ", ".join(str(location) for location in locations) or (spec.origin if spec else "nowhere")
            raise HarnessError(f"the package {name!r} is imported from {found}, not from DFQ Harness's {PROJECT_ROOT / name}: "
                               f"another installed package named {name!r} comes first on sys.path; uninstall it or "
                               "run the harness from a virtual environment without it (docs/plugins.md, Package layout)")


def _import_plugin(module_name: str, loader: Callable[[], object] | None = None) -> None:
    try:
        loader() if loader else importlib.import_module(module_name)
    except HarnessError:
        raise
    except Exception as error:  # a plugin's own bug must not hide which plugin it is
        raise HarnessError(f"plugin {module_name!r} failed to load: {type(error).__name__}: {error}") from error
