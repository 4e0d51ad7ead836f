"""What the report says, whatever its format: per task and model, leaderboards with the published
figures beside the measured ones, cost per method, figures, and the sources cited.

Numbers stay numbers here; the templates decide how they look (Markdown or HTML).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from harness.store.records import InvalidRecord
from reports.aggregate import (bits_order, calibration_data, cost_table, primary_metric, records_frame, seed_stats,
                               seed_values)
from reports.gallery import IMAGES_PER_ROW, cached_galleries
from reports.headline import GapClosure, gap_closures
from reports.metadata import RunMetadata, run_metadata
from reports.plots import Series, accuracy_svg, gallery_svg
from reports.published import FINE_TUNED, PublishedFigure, PublishedTable, ledger_protocol, load_published
from reports.significance import Comparison, compare


BASELINES = ("real", "noise")  # rows every other row is also tested against


@dataclass(frozen=True)
class Source:
    """A numbered reference; figures from one source with different notes get different numbers."""

    number: int
    source: str
    verified: str
    notes: str


@dataclass(frozen=True)
class Citation:
    value: float
    source: Source
    gap: float | None  # measured - published; None when there is no measured value to compare


@dataclass(frozen=True)
class Estimate:
    """One leaderboard cell: statistics over seeds, the drop from FP and the published figure if any."""

    mean: float
    std: float | None  # None for a single seed
    seeds: int
    drop: float | None  # FP - mean; None when the records carry no FP value
    best: bool  # best mean of its bit-width column at the shown precision (ties all marked)
    published: Citation | None
    comparisons: tuple[Comparison, ...] = ()  # against the column's best, `real` and `noise` (reports.significance)


@dataclass(frozen=True)
class LeaderboardRow:
    label: str
    cells: list[Estimate | None]  # one per bit width of the leaderboard; None where not run
    data: str  # "data-free", "real" (calibrated on real images), "not recorded", or "" (FP only)
    protocol: str = ""  # "calibration only", "fine-tuned: TUNER", or "" (FP only): never two in one row


@dataclass(frozen=True)
class GainRow:
    """What fine-tuning adds to one configuration: the tuned row against the same row without its tuner,
    per bit width (paired on shared seeds; None where either was not run)."""

    label: str  # the fine-tuned row
    base: str  # the calibration-only row it is measured against
    cells: list[Comparison | None]


@dataclass(frozen=True)
class Figure:
    name: str  # file stem for the Markdown output, unique within the report
    caption: str
    svg: str


@dataclass(frozen=True)
class RecalledFigure:
    """A published figure not yet checked against its source: shown apart, never given a gap."""

    label: str
    bits: str
    citation: Citation


@dataclass(frozen=True)
class TunedFigure:
    """A published fine-tuned figure of a fine-tuned row's method: shown apart, never given a gap, since the
    row's tuner and options are not the publication's (docs/results.md, Published figures)."""

    method: str
    bits: str
    protocol: str  # as the ledger gives it: "fine-tuned" or "fine-tuned (N epochs)"
    citation: Citation


@dataclass(frozen=True)
class Leaderboard:
    metric: str
    bits: list[str]
    rows: list[LeaderboardRow]
    recalled: list[RecalledFigure]
    fp: float | None
    fp_published: Citation | None
    plot: Figure
    gains: list[GainRow] = field(default_factory=list)
    published_tuned: list[TunedFigure] = field(default_factory=list)


@dataclass(frozen=True)
class CostRow:
    label: str
    cells: int
    cache_hits: int
    generate_s: float | None
    calibrate_s: float | None
    tune_s: float | None  # None for calibration-only rows
    evaluate_s: float | None
    peak_rss_mb: float | None
    peak_cuda_mb: float | None


@dataclass(frozen=True)
class DeploymentRow:
    """One configuration and bit width run with ``--deploy``: means over its measured seeds (docs/deploy.md)."""

    label: str
    bits: str
    setup: str  # CPU class and model, runtime, threads, weight types: rows never average across setups
    cells: int
    status: str  # "deployable", or "simulated only: <reasons>"
    metric: float | None  # the primary metric through the runtime
    difference: float | None  # runtime - fake-quant, primary metric
    speedup1: float | None  # FP latency / quantized latency, batch 1
    speedup32: float | None  # batch 32
    size_ratio: float | None  # quantized file / FP file


@dataclass(frozen=True)
class ModelSection:
    model: str
    subset: str
    anchor: str
    leaderboards: list[Leaderboard]
    costs: list[CostRow]
    deployment: list[DeploymentRow] = field(default_factory=list)

    @property
    def uses_cuda(self) -> bool:
        return any(row.peak_cuda_mb is not None for row in self.costs)


@dataclass(frozen=True)
class StaleRow:
    """A leaderboard row made by other code than the checkout's, and how that code differs."""

    label: str
    differences: str


@dataclass(frozen=True)
class TaskReport:
    task: str
    slug: str
    metrics: list[str]
    sections: list[ModelSection]
    galleries: list[Figure]
    sources: list[Source]
    stale: list[StaleRow]
    headline: list[GapClosure] = field(default_factory=list)  # the first screen (reports.headline), primary metric


@dataclass(frozen=True)
class FailedCell:
    """A cell whose record says it failed: left out of the tables, listed with its error."""

    task: str
    label: str
    model: str
    bits: str
    seed: int
    error: str
    record: str  # the record file's name


@dataclass(frozen=True)
class Report:
    tasks: list[TaskReport]
    sources: list[Source]
    metadata: RunMetadata
    failed: list[FailedCell]
    invalid: list[InvalidRecord]  # files in the records folder that are not valid records, and why


class _SourceBook:
    """Numbers sources in order of first citation, so the same records always give the same numbers."""

    def __init__(self) -> None:
        self._sources: dict[tuple[str, str, str], Source] = {}

    def cite(self, figure: PublishedFigure, measured: float | None) -> Citation:
        key = (figure.source, figure.verified, figure.notes)
        if key not in self._sources:
            self._sources[key] = Source(len(self._sources) + 1, *key)
        gap = None if measured is None else measured - figure.value
        return Citation(figure.value, self._sources[key], gap)

    def sources(self) -> list[Source]:
        return list(self._sources.values())


def build_report(records: Iterable[dict[str, Any]], results: Path, published: PublishedTable | None = None,
                 invalid: Iterable[InvalidRecord] = ()) -> Report:
    """Everything the templates show; ``results`` is read for the generator cache (gallery)."""
    records = list(records)
    failed = sorted((FailedCell(r["task"], r["label"], r["model"], r["bits"], r["seed"], r["error"], f"{r['cell_id']}.json")
                     for r in records if r.get("status") != "ok"),
                    key=lambda cell: (cell.task, cell.model, cell.label, cell.bits, cell.seed))
    frame = records_frame(records)
    published = published or load_published()
    book = _SourceBook()
    tasks = [] if frame.empty else [
        _task_report(str(task), task_frame.dropna(axis=1, how="all"), Path(results), published, book)
        for task, task_frame in frame.groupby("task", sort=True)
    ]
    return Report(tasks=tasks, sources=book.sources(), metadata=run_metadata(records), failed=failed,
                  invalid=list(invalid))


def slug(text: str) -> str:
    """A file- and anchor-safe form of a plugin-provided name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "unnamed"


def _task_report(task: str, frame: pd.DataFrame, results: Path, published: PublishedTable,
                 book: _SourceBook) -> TaskReport:
    primary = primary_metric(frame).removeprefix("metric.")
    # Besides the primary metric, show the metrics papers report for this task (mask AP beside box AP).
    extra = sorted(m for m in published.metrics(task) if f"metric.{m}" in frame.columns and m != primary)
    metrics = [primary, *extra]
    stats = {metric: _by_section(seed_stats(frame, f"metric.{metric}")) for metric in metrics}
    seeds = {metric: seed_values(frame, f"metric.{metric}") for metric in metrics}
    data = {key: calibration_data(group) for key, group in frame.groupby(["model", "subset", "label"])["data"]}
    rows_by = frame.groupby(["model", "subset", "label"])
    protocols = {key: "; ".join(sorted(set(group))) for key, group in rows_by["protocol"]}
    untuned = {key: next(iter(set(group)), "") for key, group in rows_by["untuned_label"]}
    costs = _by_section(cost_table(frame))
    sections = []
    for model, subset in sorted(costs):
        leaderboards = [_leaderboard(task, model, subset, metric, stats[metric][(model, subset)], published, book,
                                     seeds[metric], data, protocols, untuned)
                        for metric in metrics if (model, subset) in stats[metric]]
        sections.append(ModelSection(model=model, subset=subset, anchor=f"{slug(task)}--{slug(model)}--{slug(subset)}",
                                     leaderboards=leaderboards, costs=_cost_rows(costs[(model, subset)]),
                                     deployment=_deployment_rows(frame, model, subset, primary)))
    galleries = [
        Figure(name=f"{slug(task)}--gallery--{slug(generator)}", svg=gallery_svg(f"{task}: {generator}", rows),
               caption=f"{generator}: the first {IMAGES_PER_ROW} calibration images per model (lowest cached seed), "
                       "de-normalized with the task's image prior")
        for generator, rows in cached_galleries(results, set(frame["model"])).items()
    ]
    stale = frame.loc[frame["stale"] != "", ["label", "stale"]].drop_duplicates().sort_values("label")
    return TaskReport(task=task, slug=slug(task), metrics=metrics, sections=sections, galleries=galleries,
                      sources=_cited(sections), stale=[StaleRow(row.label, row.stale) for row in stale.itertuples()],
                      headline=gap_closures(frame, primary))


def _by_section(table: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Rows of one model evaluated on one subset: what a section of the task page shows."""
    return dict(list(table.groupby(["model", "subset"], sort=True)))


def _cited(sections: list[ModelSection]) -> list[Source]:
    citations = [board.fp_published for section in sections for board in section.leaderboards]
    citations += [cell.published for section in sections for board in section.leaderboards
                  for row in board.rows for cell in row.cells if cell is not None]
    citations += [figure.citation for section in sections for board in section.leaderboards for figure in board.recalled]
    citations += [figure.citation for section in sections for board in section.leaderboards
                  for figure in board.published_tuned]
    return sorted({c.source for c in citations if c is not None}, key=lambda source: source.number)


def _leaderboard(task: str, model: str, subset: str, metric: str, stats: pd.DataFrame, published: PublishedTable,
                 book: _SourceBook, seeds: dict[tuple, dict[int, float]], data: dict[tuple, str],
                 protocols: dict[tuple, str], untuned: dict[tuple, str]) -> Leaderboard:
    bits = sorted(stats["bits"].unique(), key=bits_order)
    best = {bit: max(round(mean, 2) for mean in stats.loc[stats["bits"] == bit, "mean"]) for bit in bits}
    best_label = {bit: stats.loc[stats.loc[stats["bits"] == bit, "mean"].idxmax(), "label"] for bit in bits}
    labels = {bit: set(stats.loc[stats["bits"] == bit, "label"]) for bit in bits}
    fp = _number(stats["fp"].mean())
    rows, recalled, tuned = [], [], {}
    for label, label_stats in stats.groupby("label", sort=True):
        by_bits = {entry["bits"]: entry for entry in label_stats.to_dict("records")}
        wanted = ledger_protocol(protocols[model, subset, label])  # a figure of the row's own protocol, never of the other
        cells = []
        for bit in bits:
            entry = by_bits.get(bit)
            if entry is None:
                cells.append(None)
                continue
            method = entry["published_as"] or None
            figure = published.lookup(task, model, method, bit, metric, protocol=wanted) if method else None
            unverified = (published.recalled(task, model, method, bit, metric, protocol=wanted)
                          if method and not figure else None)
            if unverified is not None:
                recalled.append(RecalledFigure(str(label), bit, book.cite(unverified, None)))
            if wanted == FINE_TUNED:
                # a fine-tuned row: its method's published fine-tuned figures, apart (another tuning than the row's)
                for other in published.fine_tuned(task, model, entry["method"], bit, metric):
                    if other is not figure and other is not unverified:
                        tuned.setdefault((entry["method"], bit, other.protocol),
                                         TunedFigure(entry["method"], bit, other.protocol, book.cite(other, None)))
            # the column's best, unless it is a baseline row, which every row is compared with anyway
            others = [(name, name) for name in BASELINES if name in labels[bit]]
            others += [("best", best_label[bit])] * (best_label[bit] not in BASELINES)
            comparisons = tuple(compare(seeds[model, subset, label, bit], seeds[model, subset, other, bit], against)
                                for against, other in others if other != label)
            cells.append(Estimate(
                mean=entry["mean"], std=_number(entry["std"]), seeds=int(entry["seeds"]), drop=_number(entry["drop"]),
                best=round(entry["mean"], 2) == best[bit],
                published=book.cite(figure, entry["mean"]) if figure else None, comparisons=comparisons,
            ))
        rows.append(LeaderboardRow(label=str(label), cells=cells, data=data[model, subset, label],
                                   protocol=protocols[model, subset, label]))
    fp_figure = published.fp(task, model, metric)
    fp_published = book.cite(fp_figure, fp) if fp_figure else None
    plot = _accuracy_figure(task, model, subset, metric, bits, rows, fp)
    gains = [GainRow(row.label, base, [compare(seeds[model, subset, row.label, bit], seeds[model, subset, base, bit], base)
                                       if (model, subset, base, bit) in seeds and (model, subset, row.label, bit) in seeds
                                       else None for bit in bits])
             for row in rows if (base := untuned[model, subset, row.label]) in set(stats["label"])]
    return Leaderboard(metric=metric, bits=bits, rows=rows, recalled=recalled, fp=fp, fp_published=fp_published,
                       plot=plot, gains=gains,
                       published_tuned=sorted(tuned.values(), key=lambda f: (f.method, bits.index(f.bits), f.protocol)))


def _accuracy_figure(task: str, model: str, subset: str, metric: str, bits: list[str], rows: list[LeaderboardRow],
                     fp: float | None) -> Figure:
    """Lowest precision on the left, so lines rise towards FP."""
    order = list(reversed(range(len(bits))))
    series = [Series(label=row.label,
                     means=[row.cells[i].mean if row.cells[i] else None for i in order],
                     stds=[row.cells[i].std if row.cells[i] else None for i in order],
                     published=[row.cells[i].published.value if row.cells[i] and row.cells[i].published else None
                                for i in order])
              for row in rows]
    title = f"{model} ({subset})"
    return Figure(name=f"{slug(task)}--{slug(model)}--{slug(subset)}--{slug(metric)}",
                  caption=f"{metric} vs bit width on {model} ({subset}): mean ± std over seeds; hollow markers are "
                          "published figures, the dashed line is FP",
                  svg=accuracy_svg(title, metric, [bits[i] for i in order], series, fp))


def _cost_rows(costs: pd.DataFrame) -> list[CostRow]:
    return [CostRow(label=str(row["label"]), cells=int(row["cells"]), cache_hits=int(row["cache_hits"]),
                    generate_s=_number(row.get("time.generate")), calibrate_s=_number(row.get("time.calibrate")),
                    tune_s=_number(row.get("time.tune")),
                    evaluate_s=_number(row.get("time.evaluate")), peak_rss_mb=_number(row.get("memory.peak_rss_mb")),
                    peak_cuda_mb=_number(row.get("memory.peak_cuda_mb")))
            for row in costs.to_dict("records")]


def _deployment_rows(frame: pd.DataFrame, model: str, subset: str, metric: str) -> list[DeploymentRow]:
    """The deployment table of a section: rows measured with ``--deploy`` only, by label, bit width and
    the setup that decides the figures (one row per CPU class, runtime version, threads)."""
    if "deploy.status" not in frame.columns:
        return []
    measured = frame[(frame["model"] == model) & (frame["subset"] == subset) & frame["deploy.status"].notna()]
    rows = []
    groups = sorted(measured.groupby(["label", "bits", "deploy.setup"]),
                    key=lambda item: (item[0][0], bits_order(item[0][1]), item[0][2]))
    for (label, bits, setup), group in groups:
        mean = {column: _number(group[column].mean()) if column in group else None
                for column in (f"deploy.metric.{metric}", f"deploy.difference.{metric}", "deploy.speedup1",
                               "deploy.speedup32", "deploy.size_ratio")}
        rows.append(DeploymentRow(label=str(label), bits=str(bits), setup=str(setup), cells=len(group),
                                  status="; ".join(sorted(set(group["deploy.status"]))),
                                  metric=mean[f"deploy.metric.{metric}"], difference=mean[f"deploy.difference.{metric}"],
                                  speedup1=mean["deploy.speedup1"], speedup32=mean["deploy.speedup32"],
                                  size_ratio=mean["deploy.size_ratio"]))
    return rows


def _number(value: Any) -> float | None:
    """NaN and missing become None, so templates show an empty cell rather than 'nan' or 0."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
