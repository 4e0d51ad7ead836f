"""Where the numbers came from: commits, library versions, machines and dates over all records (docs/results.md)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class RunMetadata:
    """Each value with the number of records that carry it, so a mixed grid is visible at a glance."""

    finished: int
    failed: int
    commits: list[tuple[str, int]]
    versions: list[tuple[str, list[tuple[str, int]]]]
    machines: list[tuple[str, int]]
    hosts: list[tuple[str, int]]
    first_date: str
    last_date: str


def run_metadata(records: Iterable[dict[str, Any]]) -> RunMetadata:
    """Summarize every record, failed ones included (they ran on the same commit and machine)."""
    records = list(records)
    versions: dict[str, Counter] = {}
    for record in records:
        for package, version in record.get("versions", {}).items():
            versions.setdefault(package, Counter())[version] += 1
    dates = sorted(str(record["date"]) for record in records if record.get("date"))
    return RunMetadata(
        finished=sum(record.get("status") == "ok" for record in records),
        failed=sum(record.get("status") != "ok" for record in records),
        commits=_counts(record.get("harness_commit", "unknown") for record in records),
        versions=[(package, _counts(counter.elements())) for package, counter in sorted(versions.items())],
        machines=_counts(record.get("machine", "unknown") for record in records),
        hosts=_counts(record.get("host", "unknown") for record in records),
        first_date=dates[0] if dates else "",
        last_date=dates[-1] if dates else "",
    )


def _counts(values: Iterable[str]) -> list[tuple[str, int]]:
    """Most frequent first, ties by name."""
    return sorted(Counter(str(v) for v in values).items(), key=lambda item: (-item[1], item[0]))
