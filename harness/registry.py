"""Typed registries for methods, generators, calibrators, tuners, tasks and models.

Plugins register themselves on import; the first lookup runs :func:`harness.discovery.discover_plugins`,
which imports every folder under ``methods/`` and ``tasks/`` and every entry point in the
``dfq_harness.methods`` / ``dfq_harness.tasks`` groups, so an outside package can add a plugin
without touching the core.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from harness.discovery import discover_plugins, discovering
from harness.errors import HarnessError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry map whose lookup errors list the known names and a close match."""

    def __init__(self, kind: str, on_add: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self._on_add = on_add  # tells an entry the name it is registered under (a task class states it once)
        self._entries: dict[str, T] = {}
        self.added_outside_discovery: list[str] = []  # a test's or a notebook's: not cached as the listing

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            if self._entries[name] is not entry:
                raise HarnessError(f"{self.kind} {name!r} is registered twice")
            return entry
        self._entries[name] = entry
        if not discovering():
            self.added_outside_discovery.append(name)
        if self._on_add is not None:
            self._on_add(name, entry)
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
TUNERS: Registry = Registry("tuner")
TASKS: Registry = Registry("task", on_add=lambda name, task: task.registered_as(name))
MODELS: Registry = Registry("model")
