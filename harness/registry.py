"""Typed registries for methods, generators, calibrators, tasks and models.

Plugins register themselves on import; :func:`discover_plugins` imports every folder under
``methods/`` and ``tasks/`` and every entry point in the ``dfq_harness.methods`` /
``dfq_harness.tasks`` groups, so an outside package can add a plugin without touching the core.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")

ENTRY_POINT_GROUPS = ("dfq_harness.methods", "dfq_harness.tasks")
PLUGIN_PACKAGES = ("methods", "tasks")


class Registry(Generic[T]):
    """Name -> entry map whose lookup errors list the known names and a close match."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries and self._entries[name] is not entry:
            raise HarnessError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        discover_plugins()
        if name not in self._entries:
            raise HarnessError(unknown_name_message(self.kind, name, self.names()))
        return self._entries[name]

    def names(self) -> list[str]:
        discover_plugins()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        discover_plugins()
        return iter(sorted(self._entries.items()))

    def __contains__(self, name: str) -> bool:
        discover_plugins()
        return name in self._entries


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; known {kind}s: {', '.join(known) or 'none'}"


METHODS: Registry = Registry("method")
GENERATORS: Registry = Registry("generator")
CALIBRATORS: Registry = Registry("calibrator")
TASKS: Registry = Registry("task")
MODELS: Registry = Registry("model")

_discovered = False


def discover_plugins() -> None:
    """Import every plugin folder and entry point once; a broken plugin names itself."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import harness.calibrators  # noqa: F401  (the core's own calibrators)

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
