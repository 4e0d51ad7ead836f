"""Which methods run on which tasks, known before a grid's first cell (docs/plugins.md, Support).

Generators and calibrators declare what they need from a task (``needs``, or ``required()`` when an
option adds to it); a task declares what it offers (``Task.offers``): each capability either always,
or on a condition the user meets (a class source passed as a task option, ...), which
``Task.unmet`` checks on the task instance a cell will run on. ``list`` shows the matrix from the
declarations alone; ``run`` checks every cell of the grid, refuses the unsupported ones in one
message, or skips them when asked. This module names no method and no task.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from harness.errors import HarnessError
from harness.plugin.capabilities import CAPABILITIES
from harness.plugin.registry import CALIBRATORS, GENERATORS, METHODS, TASKS, TUNERS

if TYPE_CHECKING:
    from harness.plugin.task import Task
    from harness.run.grid import Cell



@dataclass(frozen=True)
class Verdict:
    """Whether a pair runs: ``runs``, ``conditional`` (on what the task needs from the user) or ``refused`` (why)."""

    status: Literal["runs", "conditional", "refused"]
    reasons: tuple[str, ...] = ()


def requirements(generator: str, calibrator: str, generator_options: Any = None,
                 calibrator_options: Any = None, tuner: str | None = None,
                 tuner_options: Any = None) -> dict[str, list[str]]:
    """Capability -> the stages of a (generator, calibrator[, tuner]) cell that need it (``generator 'x'``), in order.

    Options default to the plugins' own defaults; an option may add a need (``required()``).
    """
    needed: dict[str, list[str]] = defaultdict(list)
    stages = [("generator", GENERATORS, generator, generator_options),
              ("calibrator", CALIBRATORS, calibrator, calibrator_options)]
    if tuner is not None:
        stages.append(("tuner", TUNERS, tuner, tuner_options))
    for kind, registry, name, options in stages:
        plugin = registry.get(name)
        for capability in sorted(plugin(options).required()):
            needed[capability].append(f"{kind} {name!r}")
    return dict(needed)


def declared_verdict(generator: str, calibrator: str, task: str, tuner: str | None = None) -> Verdict:
    """What the declarations alone say about a pair (and tuner) with default options (``list``)."""
    offers = TASKS.get(task).offers
    refused, conditions = [], []
    for capability, parts in requirements(generator, calibrator, tuner=tuner).items():
        if capability not in offers:
            refused.append(_missing(parts, capability, "the task offers none"))
        elif offers[capability] is not None:
            conditions.append(f"{capability} from {offers[capability]}")
    if refused:
        return Verdict("refused", tuple(refused))
    return Verdict("conditional", tuple(conditions)) if conditions else Verdict("runs")


def cell_refusal(cell: Cell, task: Task) -> str | None:
    """Why ``cell`` cannot run on ``task`` (the instance it would run on), or None when it can."""
    if cell.bits.is_fp:  # an FP cell runs neither generator nor calibrator
        return None
    problems = []
    for capability, parts in requirements(cell.generator, cell.calibrator, cell.generator_options,
                                          cell.calibrator_options, cell.tuner, cell.tuner_options).items():
        if capability not in task.offers:
            problems.append(_missing(parts, capability, f"{cell.task} offers none"))
        elif task.offers[capability] is not None and (unmet := task.unmet(capability, cell.model)) is not None:
            problems.append(_missing(parts, capability, unmet))
    return "; ".join(problems) or None


def supported_cells(cells: list[Cell], task_for: Callable[[Cell], Task],
                    skip: bool = False) -> tuple[list[Cell], list[str]]:
    """The cells that can run, and a line for each (method, task, model) skipped.

    Unless ``skip``, any unsupported cell is a :class:`HarnessError` naming every unsupported pair
    and why, in one message, before anything runs.
    """
    refusals: dict[tuple[str, str, str], str] = {}
    kept = []
    for cell in cells:
        reason = cell_refusal(cell, task_for(cell))
        if reason is None:
            kept.append(cell)
        else:
            refusals.setdefault((cell.method, cell.task, cell.model), reason)
    if not refusals:
        return kept, []
    grouped: dict[str, list[str]] = defaultdict(list)  # one reason, the pairs it refuses
    for (method, task, model), reason in refusals.items():
        grouped[reason].append(f"{method} on {task} {model}")
    described = [f"{', '.join(pairs)}: {reason}" for reason, pairs in grouped.items()]
    if not skip:
        raise HarnessError(f"{len(refusals)} (method, task, model) combination(s) of this grid cannot run, so nothing "
                           f"ran: {' | '.join(described)} (--skip-unsupported runs the rest)")
    return kept, described


def support_lines() -> list[str]:
    """The method x task matrix of ``list``: what each method needs, and per task ``yes``, ``[n]`` or ``no [n]``."""
    tasks = TASKS.names()
    notes: list[str] = []
    rows = []
    for name, method in METHODS.items():
        needs = ", ".join(requirements(method.generator, method.calibrator, tuner=method.tuner)) or "-"
        cells = []
        for task in tasks:
            verdict = declared_verdict(method.generator, method.calibrator, task, method.tuner)
            if verdict.status == "runs":
                cells.append("yes")
                continue
            note = f"{'' if verdict.status == 'refused' else 'runs with '}{'; '.join(verdict.reasons)}"
            if note not in notes:
                notes.append(note)
            cells.append(f"{'no ' if verdict.status == 'refused' else ''}[{notes.index(note) + 1}]")
        rows.append([name, needs, *cells])
    table = [["method", "needs", *tasks], *rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in table]
    return lines + [f"[{index}] {note}" for index, note in enumerate(notes, 1)]


def _missing(parts: list[str], capability: str, why: str) -> str:
    return f"{' and '.join(parts)} need{'s' if len(parts) == 1 else ''} {capability} ({CAPABILITIES[capability]}): {why}"

