"""Typed registries for methods, generators, calibrators, tuners, tasks and models.

Each registry states what it holds (a subclass of a plugin base, or an instance of a spec class) and refuses
anything else at registration, so a wrong plugin type is one line naming the plugin, not a failure in a grid.

Plugins register themselves on import; the first lookup runs :func:`harness.plugin.discovery.discover_plugins`,
which imports every folder under ``methods/`` and ``tasks/`` and every entry point in the
``dfq_harness.methods`` / ``dfq_harness.tasks`` groups, so an outside package can add a plugin
without touching the core.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

from harness.errors import HarnessError
from harness.plugin.discovery import discover_plugins, discovering
from harness.plugin.method import Calibrator, Generator, MethodSpec
from harness.plugin.task import ModelEntry, Task
from harness.plugin.tuner import Tuner

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry map of one declared type, whose lookup errors list the known names and a close match.

    ``entry_type`` is the base every entry subclasses (``of_classes``, plugin classes) or the class every
    entry is an instance of (specs such as :class:`MethodSpec`).
    """

    def __init__(self, kind: str, entry_type: type, of_classes: bool = True,
                 on_add: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self.entry_type = entry_type
        self.of_classes = of_classes
        self._on_add = on_add  # tells an entry the name it is registered under (a task class states it once)
        self._entries: dict[str, T] = {}
        self.added_outside_discovery: list[str] = []  # a test's or a notebook's: not cached as the listing

    def add(self, name: str, entry: T) -> T:
        if not self.accepts(entry):
            wanted = f"a subclass of {self.entry_type.__name__}" if self.of_classes else f"a {self.entry_type.__name__}"
            raise HarnessError(f"{self.kind} {name!r} cannot be registered: {_described(entry)} is not {wanted} "
                               f"(docs/plugins.md)")
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

    def accepts(self, entry: Any) -> bool:
        if self.of_classes:
            return isinstance(entry, type) and issubclass(entry, self.entry_type)
        return isinstance(entry, self.entry_type)

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


def _described(entry: Any) -> str:
    if isinstance(entry, type):
        return f"class {entry.__module__}.{entry.__qualname__}"
    if hasattr(entry, "__qualname__"):  # a function
        return f"{type(entry).__name__} {entry.__module__}.{entry.__qualname__}"
    if type(entry).__repr__ is object.__repr__:
        return f"an instance of {type(entry).__module__}.{type(entry).__qualname__}"
    return f"{type(entry).__name__} {entry!r}"[:120]


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; known {kind}s: {', '.join(known) or 'none'}"


METHODS: Registry[MethodSpec] = Registry("method", MethodSpec, of_classes=False)
GENERATORS: Registry[type[Generator]] = Registry("generator", Generator)
CALIBRATORS: Registry[type[Calibrator]] = Registry("calibrator", Calibrator)
TUNERS: Registry[type[Tuner]] = Registry("tuner", Tuner)
TASKS: Registry[type[Task]] = Registry("task", Task, on_add=lambda name, task: task.registered_as(name))
MODELS: Registry[ModelEntry] = Registry("model", ModelEntry, of_classes=False)


def register_models(task_name: str, descriptions: dict[str, str]) -> tuple[str, ...]:
    """Register a task's models in the model registry; returns their names in order."""
    for model_name, description in descriptions.items():
        MODELS.add(model_name, ModelEntry(task=task_name, description=description))
    return tuple(descriptions)
