"""DFQ Harness. ``harness.benchmark(...)`` runs a grid in this process and returns its leaderboard as
DataFrames (harness/entry/benchmarking.py, README, From Python); it loads on first use, so ``import harness`` (and
``python -m harness --help``) loads no torch."""
from __future__ import annotations

from typing import Any

__all__ = ["BenchmarkResult", "benchmark"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from harness.entry import benchmarking

        return getattr(benchmarking, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
