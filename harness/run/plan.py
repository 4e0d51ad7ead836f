"""``run --dry-run``: a grid's cells, what the results folder already holds, and how long the rest should take.

Nothing is computed or written. Per cell: whether its record is finished (and made by this
checkout's code), whether its calibration set and its model's FP metric are cached, and an
estimate of each stage still to run (generate, calibrate, evaluate, FP evaluation), the median of
the ``timing_s`` of finished records most like it: the same generator / calibrator / task, then as
many of model, bits, options and limit as possible. The totals are given for one worker and for k
(``--workers-estimate``), the cells spread longest first over the workers, each calibration set and
FP metric counted once, by the first cell that needs it.
"""
from __future__ import annotations

import contextlib
import heapq
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.errors import HarnessError
from harness.plugin.capabilities import CLASSES
from harness.plugin.registry import GENERATORS, TASKS
from harness.run.grid import Cell, GridSpec, code_differences, expand
from harness.store.io import config_hash
from harness.store.records import ResultStore, read_fp_metric

STAGES = ("generate", "calibrate", "evaluate", "fp evaluate")


@dataclass
class CellPlan:
    """One cell: its state in the results folder and the seconds each stage it still needs should take."""

    cell: Cell
    state: str  # "finished", "stale" (finished by other code), "to run", or "unknown" (weights missing)
    calibration_cached: bool | None = None  # None: an FP cell, or a generator whose sets are not cached
    fp_cached: bool | None = None
    stages: dict[str, float | None] = field(default_factory=dict)  # stage -> seconds (None: no record to go by)
    basis: dict[str, str] = field(default_factory=dict)  # stage -> which records the estimate comes from
    note: str = ""

    @property
    def seconds(self) -> float:
        return sum(value for value in self.stages.values() if value is not None)


@dataclass
class GridPlan:
    out: Path
    cells: list[CellPlan]
    machines: list[str]  # the machines that made the records estimates come from

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for plan in self.cells:
            counts[plan.state] = counts.get(plan.state, 0) + 1
        return counts

    def stage_totals(self) -> dict[str, tuple[int, float, int]]:
        """stage -> (runs, estimated seconds, runs without an estimate)."""
        totals = {stage: [0, 0.0, 0] for stage in STAGES}
        for plan in self.cells:
            for stage, seconds in plan.stages.items():
                totals[stage][0] += 1
                totals[stage][1] += seconds or 0.0
                totals[stage][2] += seconds is None
        return {stage: (runs, seconds, missing) for stage, (runs, seconds, missing) in totals.items()}

    def makespan(self, workers: int) -> float:
        """Estimated wall time on ``workers`` workers: longest cells first, each to the least busy worker."""
        loads = [0.0] * max(1, workers)
        for seconds in sorted((plan.seconds for plan in self.cells), reverse=True):
            heapq.heapreplace(loads, loads[0] + seconds)
        return max(loads)


def plan_grid(spec: GridSpec, out: Path, force: bool = False, recompute_stale: bool = False) -> GridPlan:
    """The plan of ``spec`` against the results folder ``out`` (read only; nothing is downloaded either:
    a model whose weights are not here yet is planned as ``unknown``, with the reason)."""
    store = ResultStore(out)
    history = [record for record in store.records() if record.get("status") == "ok" and record.get("timing_s")]
    tasks: dict[tuple, Any] = {}
    planned: set[tuple] = set()  # calibration sets and FP metrics some planned cell makes
    plans = []
    used: set[str] = set()
    for cell in expand(spec):
        with offline_hub():
            plan = _cell_plan(cell, store, tasks, force, recompute_stale)
        if plan.state in ("to run", "unknown"):
            _add_estimates(plan, history, used, planned)
        plans.append(plan)
    machines = sorted({record.get("machine", "?") for record in history if record["cell_id"] in used})
    return GridPlan(out, plans, machines)


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """The Hugging Face hub treated as unreachable for the duration: a dry run downloads no weights."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _cell_plan(cell: Cell, store: ResultStore, tasks: dict[tuple, Any], force: bool, recompute_stale: bool) -> CellPlan:
    key = (cell.task, repr(cell.task_options))
    task = tasks.get(key) or tasks.setdefault(key, TASKS.get(cell.task)(cell.task_options))
    try:
        keys = cell.keys(task.weights_id(cell.model))
    except HarnessError as error:
        return CellPlan(cell, "unknown", note=str(error), calibration_cached=False if _cached_sets(cell) else None,
                        fp_cached=False)
    record = None if force else store.finished(keys.cell_id)
    if record is not None:
        stale = bool(code_differences(record))
        if not (stale and recompute_stale):
            return CellPlan(cell, "stale" if stale else "finished")
    fp_cached = not force and read_fp_metric(store.fp_metric_path(keys), task.metric_names)[0] is not None
    plan = CellPlan(cell, "to run", fp_cached=fp_cached)
    if _cached_sets(cell):
        # the target's model is loaded only to make images; its prior and class source are the cache key's
        needs_classes = CLASSES in GENERATORS.get(cell.generator)(cell.generator_options).required()
        target = task.synthesis_target(cell.model, None, needs_classes)
        path = store.calibration_path(cell.generator, keys.calibration_key(target.prior, target.class_source))
        plan.calibration_cached = not force and path.exists()
    return plan


def _cached_sets(cell: Cell) -> bool:
    """Whether the cell's calibration set is cached and shared (a quantized cell, a bit-independent generator)."""
    return not cell.bits.is_fp and GENERATORS.get(cell.generator).bit_independent


def _add_estimates(plan: CellPlan, history: list[dict[str, Any]], used: set[str], planned: set[tuple]) -> None:
    """Stages this cell runs, with estimates; a set or FP metric another planned cell makes is not counted twice."""
    cell = plan.cell
    config = cell.config()
    fp_key = ("fp", cell.task, cell.model, config_hash(config["options"]["task"]), cell.limit)
    set_key = ("set", cell.generator, cell.task, cell.model, cell.seed, config_hash(config["options"]["generator"]))
    needed = []
    if not plan.fp_cached and fp_key not in planned:
        needed.append("fp evaluate")
        planned.add(fp_key)
    if not cell.bits.is_fp:
        if not plan.calibration_cached and (set_key not in planned or not _cached_sets(cell)):
            needed.append("generate")
            planned.add(set_key)
        needed += ["calibrate", "evaluate"]
    for stage in needed:
        seconds, basis = _estimate(stage, cell, history, used)
        plan.stages[stage], plan.basis[stage] = seconds, basis


# per stage: the record field that must match, then the fields that make a record nearer, most telling first
_LIKENESS: dict[str, tuple[str, tuple[Callable[[Cell], Any], ...]]] = {
    "generate": ("generator", ("model", "task", "options.generator", "seed")),
    "calibrate": ("calibrator", ("model", "bits", "task", "generator", "options.calibrator")),
    "evaluate": ("task", ("model", "options.limit", "bits")),
    "fp evaluate": ("task", ("model", "options.limit", "bits")),
}


def _value(source: Cell | dict[str, Any], name: str) -> Any:
    if isinstance(source, Cell):
        config = source.config()
    else:
        config = source
    for part in name.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _estimate(stage: str, cell: Cell, history: list[dict[str, Any]], used: set[str]) -> tuple[float | None, str]:
    """Median seconds of the most alike records that timed this stage, and which records those are."""
    timing = "evaluate" if stage == "fp evaluate" else stage  # FP evaluation is timed like a fake-quant one
    required, nearer = _LIKENESS[stage]
    wanted = _value(cell, required)
    candidates = [record for record in history if record.get(required) == wanted
                  and isinstance(record["timing_s"].get(timing), (int, float))
                  and not (stage == "generate" and record.get("generator_cache_hit"))]
    if not candidates:
        return None, f"no finished record with {required} {wanted}"
    scores = [tuple(_value(record, name) == _value(cell, name) for name in nearer) for record in candidates]
    best = max(scores)
    chosen = [record for record, score in zip(candidates, scores) if score == best]
    used.update(record["cell_id"] for record in chosen)
    matched = [name.removeprefix("options.") for name, same in zip(nearer, best) if same]
    basis = f"{len(chosen)} record(s) of {required} {wanted}" + (f", same {', '.join(matched)}" if matched else "")
    return statistics.median(record["timing_s"][timing] for record in chosen), basis


def format_plan(plan: GridPlan, workers: int = 1) -> str:
    """The dry run's printout: one line per cell, then totals per stage and for 1 and ``workers`` workers."""
    counts = plan.counts()
    lines = [f"plan for {plan.out}: {len(plan.cells)} cells: "
             + ", ".join(f"{counts[state]} {state}" for state in ("finished", "stale", "to run", "unknown")
                         if state in counts)]
    header = f"  {'method':16s} {'task':8s} {'model':30s} {'bits':6s} {'seed':>4s}  {'state':9s} {'calib set':9s} " \
             f"{'FP metric':9s}  estimate"
    lines.append(header)
    for item in plan.cells:
        cell = item.cell
        stages = ", ".join(f"{stage} {_duration(seconds)}" for stage, seconds in item.stages.items())
        lines.append(f"  {cell.method:16s} {cell.task:8s} {cell.model:30s} {str(cell.bits):6s} {cell.seed:4d}  "
                     f"{item.state:9s} {_cached(item.calibration_cached):9s} {_cached(item.fp_cached):9s}  "
                     f"{stages or '-'}")
    lines.append("stages still to run (estimates from the median timing_s of the most alike finished records):")
    for stage, (runs, seconds, missing) in plan.stage_totals().items():
        if runs:
            unknown = f", {missing} without an estimate (no alike record yet)" if missing else ""
            lines.append(f"  {stage:12s} {runs:4d} x, {_duration(seconds)}{unknown}")
    lines.append(f"total: {_duration(plan.makespan(1))} on one worker, {_duration(plan.makespan(workers))} on "
                 f"{workers} workers (one cell at a time each, longest first)")
    if plan.machines:
        lines.append(f"timings measured on: {'; '.join(plan.machines)}")
    notes = list(dict.fromkeys(item.note for item in plan.cells if item.note))
    if notes:
        lines.append("unknown cells (weights not here yet; a run fetches them or needs --checkpoint):")
        lines += [f"  {note}" for note in notes]
    return "\n".join(lines)


def _cached(value: bool | None) -> str:
    return "-" if value is None else ("cached" if value else "to make")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
