"""Writes the report from a results folder: GitHub-friendly Markdown (``index.md``, one page per task,
``leaderboard.md`` with every table on one page, figures as SVG files in ``figures/``) and one
self-contained HTML page (``report.html``: inline CSS and SVG, nothing fetched from the network).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jinja2 import Environment, PackageLoader

from harness.errors import HarnessError
from harness.store.io import replaced_folder
from harness.store.records import ResultStore
from reports.content import Report, build_report
from reports.significance import verdict

FORMATS = ("html", "md")
HTML_PAGE = "report.html"
FIGURES = "figures"


def write_report(results: Path, out: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Render every record under ``results``; returns the entry pages written (``index.md``, ``report.html``).

    The pages are written into a temporary sibling of ``out`` that then replaces it whole, so an
    interrupted or failing render leaves the previous report as it was, never half new (issue 31).
    """
    check_report_folder(out)
    store = ResultStore(results)
    report = build_report(store.records(), results, invalid=store.invalid_records(set_aside=True))
    with replaced_folder(out.resolve()) as staging:
        written = []
        if "md" in formats:
            written.append(write_markdown(report, staging, html_page=HTML_PAGE if "html" in formats else None))
        if "html" in formats:
            written.append(write_html(report, staging / HTML_PAGE))
    return [out / page.relative_to(staging) for page in written]


def check_report_folder(out: Path) -> None:
    """The report folder is replaced whole, so it may hold nothing but a report: ``--out`` naming the
    results folder or a working folder would otherwise lose its files."""
    if out.exists() and not out.is_dir():
        raise HarnessError(f"report folder {out} is a file; name a folder (new, or an earlier report's)")
    foreign = sorted(entry.name for entry in out.iterdir() if not _report_entry(entry)) if out.is_dir() else []
    if foreign:
        raise HarnessError(f"report folder {out} holds files that are not a report's ({', '.join(foreign[:3])}"
                           f"{', ...' if len(foreign) > 3 else ''}); name a folder that is new or holds only a report, "
                           "as it is replaced whole")


def _report_entry(entry: Path) -> bool:
    if entry.name == FIGURES:
        return entry.is_dir() and all(figure.suffix == ".svg" for figure in entry.iterdir())
    return entry.is_file() and (entry.suffix == ".md" or entry.name == HTML_PAGE)


def write_markdown(report: Report, out: Path, html_page: str | None = None) -> Path:
    """Pages link their figures as files, which GitHub shows inline; returns ``index.md``."""
    env = _environment(autoescape=False)
    env.filters["md"] = markdown_text
    (out / FIGURES).mkdir(parents=True, exist_ok=True)
    for task in report.tasks:
        figures = [board.plot for section in task.sections for board in section.leaderboards] + task.galleries
        for figure in figures:
            (out / FIGURES / f"{figure.name}.svg").write_text(figure.svg)
        page = env.get_template("task.md.j2").render(task=task, figures=FIGURES, html_page=html_page)
        (out / f"{task.slug}.md").write_text(page)
    (out / "leaderboard.md").write_text(env.get_template("leaderboard.md.j2").render(report=report))
    index = out / "index.md"
    index.write_text(env.get_template("index.md.j2").render(report=report, html_page=html_page))
    return index


def write_html(report: Report, path: Path) -> Path:
    """Autoescaped: plugin-provided names are text, never markup; only our own SVG is inserted as is."""
    path.write_text(_environment(autoescape=True).get_template("report.html.j2").render(report=report))
    return path


def markdown_text(text: object) -> str:
    """A plugin-provided name as literal Markdown text, safe inside a table cell, link or heading."""
    escaped = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for character in "\\|[]*`":  # not "_": GitHub leaves snake_case model names alone
        escaped = escaped.replace(character, "\\" + character)
    return escaped


def _environment(autoescape: bool) -> Environment:
    env = Environment(loader=PackageLoader("reports", "templates"), autoescape=autoescape,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(num=_number, signed=_signed, seconds=_seconds, whole=_whole, verdict=verdict)
    return env


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _whole(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return "<0.01" if value < 0.01 else f"{value:.2f}"
