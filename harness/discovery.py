"""Plugin discovery: every folder under ``methods/`` and ``tasks/``, the core's own calibrators and
every entry point in the ``dfq_harness.methods`` / ``dfq_harness.tasks`` groups, imported once.

Plugins are imported by name at the first registry lookup, never by an import statement: this module
names no plugin module in its imports, so registries and the modules plugins build on (harness.method,
harness.task) never depend on a plugin, and plugins may import them freely (no import cycle).
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Callable

from harness.errors import HarnessError

ENTRY_POINT_GROUPS = ("dfq_harness.methods", "dfq_harness.tasks")
PLUGIN_PACKAGES = ("methods", "tasks")  # each sub-folder is a plugin
CORE_PLUGIN_MODULES = ("harness.calibrators",)  # the core's range calibrators (min-max, percentile, OMSE)

_discovered = False


def discover_plugins() -> None:
    """Import every plugin folder and entry point once; a broken plugin names itself."""
    global _discovered
    if _discovered:
        return
    _discovered = True
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


def _import_plugin(module_name: str, loader: Callable[[], object] | None = None) -> None:
    try:
        loader() if loader else importlib.import_module(module_name)
    except HarnessError:
        raise
    except Exception as error:  # a plugin's own bug must not hide which plugin it is
        raise HarnessError(f"plugin {module_name!r} failed to load: {type(error).__name__}: {error}") from error
