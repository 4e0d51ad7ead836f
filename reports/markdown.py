"""A plain Markdown leaderboard of every finished cell (the full HTML leaderboard is issue 8)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from jinja2 import Environment, PackageLoader

from reports.aggregate import leaderboard, primary_metric, records_frame


def render_markdown(records: Iterable[dict[str, Any]]) -> str:
    frame = records_frame(records)
    env = Environment(loader=PackageLoader("reports", "templates"), autoescape=False,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    sections = []
    if not frame.empty:
        for task, task_frame in frame.groupby("task"):
            metric = primary_metric(task_frame.dropna(axis=1, how="all"))
            table = leaderboard(task_frame, metric).reset_index().rename(columns={"label": "method"})
            sections.append({"task": task, "metric": metric.removeprefix("metric."),
                             "table": table.to_markdown(index=False)})
    return env.get_template("leaderboard.md.j2").render(sections=sections, cells=len(frame))


def write_markdown(records: Iterable[dict[str, Any]], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "leaderboard.md"
    path.write_text(render_markdown(records))
    return path
