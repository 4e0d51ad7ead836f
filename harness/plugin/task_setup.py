"""A small offline instance of a task, as a task builds it (``conformance_setup``, ``tiny_instance``).

It lives beside harness.plugin.task, not in the conformance kit: tasks build their instances for tests and
benchmarks too, and production code must not import the test kit (which imports the runner).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

SETUP_LIMIT = 64  # images a small instance evaluates unless it says otherwise


@dataclass(frozen=True)
class TaskSetup:
    """A small instance of a task: its options (e.g. a tiny self-made data root), one model, images evaluated."""

    options: Mapping[str, Any] = field(default_factory=dict)
    model_name: str | None = None  # None: the task's first model
    limit: int | None = SETUP_LIMIT


class ConformanceSkip(Exception):
    """The kit cannot build a small instance of the plugin here (a task needing external data)."""
