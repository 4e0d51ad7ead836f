"""The grid scheduler: CLI -> grid -> which cells run, where (harness.run.executors) -> summary.

Resumable: a cell whose ``ok`` record exists is skipped, so a killed grid started again loses
nothing and redoes nothing that finished. A failing cell becomes an error record; the grid goes on.
Several runners may share one results directory: a runner first does the cells nobody holds, then
waits for the ones another runner is computing. Each cell is settled by the per-cell worker
(harness.run.worker), in this process or, through an executor, in another one.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.plugin.support import supported_cells
from harness.progress import progress_bar
from harness.run.executors import check_executor, map_cells
from harness.run.grid import Cell, GridSpec, expand
from harness.run.worker import CellWorker, Outcome, StaleEntry
from harness.store.paths import check_cache_dir
from harness.store.records import InvalidRecord


@dataclass
class RunSummary:
    records: list[dict[str, Any]] = field(default_factory=list)
    computed: int = 0
    skipped: int = 0
    failed: int = 0
    stale: list[StaleEntry] = field(default_factory=list)  # reused as they are; see recompute_stale
    invalid: list[InvalidRecord] = field(default_factory=list)  # in the records folder, never counted as finished
    unsupported: list[str] = field(default_factory=list)  # (method, task, model) skipped, and why (harness.plugin.support)

    def add(self, outcome: Outcome) -> None:
        record, computed = outcome
        self.records.append(record)
        self.computed += computed
        self.skipped += not computed
        self.failed += computed and record["status"] != "ok"


class GridRunner:
    """Runs a grid's cells in order here, or sends the unfinished ones to an executor."""

    def __init__(self, out: Path, device: str = "cpu", force: bool = False, recompute_stale: bool = False) -> None:
        self.worker = CellWorker(out, device=device, force=force, recompute_stale=recompute_stale)
        self.store = self.worker.store

    def run(self, spec: GridSpec, executor: str = "local", executor_options: dict[str, Any] | None = None,
            skip_unsupported: bool = False) -> RunSummary:
        """Run every cell of the grid; ``executor`` other than ``local`` sends unfinished cells elsewhere.

        Cells a task cannot support are refused before the first one runs, or skipped (harness.plugin.support).
        """
        cells, unsupported = supported_cells(expand(spec), self.worker.task, skip_unsupported)
        cells = self.preflight(cells, executor)
        summary = RunSummary(invalid=self.store.invalid_records(), unsupported=unsupported)
        bar = progress_bar(total=len(cells), desc="grid", unit="cell")
        if executor == "local":
            held_elsewhere = []
            for cell in cells:
                bar.set_postfix_str(f"{cell.method} {cell.model} {cell.bits} seed {cell.seed}")
                outcome = self.worker.settle(cell, blocking=False)
                if outcome is None:
                    held_elsewhere.append(cell)
                    continue
                summary.add(outcome)
                bar.update()
            for cell in held_elsewhere:  # another runner is computing these: wait, then reuse its record
                summary.add(self.worker.settle(cell, blocking=True))
                bar.update()
        else:
            pending = []
            for cell in cells:
                existing = self.worker.reusable(cell)
                if existing is None:
                    pending.append(cell)
                else:
                    summary.add((existing, False))
                    bar.update()
            for outcome in map_cells(executor, self.worker, pending, executor_options or {}):
                summary.add(outcome)
                bar.update()
        bar.close()
        by_id = {self.worker.keys(cell).cell_id: cell for cell in cells}
        for record in summary.records:  # also those computed by other processes (executors) from stale sets
            self.worker.check_record(by_id[record["cell_id"]], record)
        summary.stale = list(self.worker.stale.values())
        return summary

    def preflight(self, cells: list[Cell], executor: str = "local") -> list[Cell]:
        """Check, before the first cell, what would otherwise fail every cell: the executor, the results
        and cache folders, each task's data and weights, and the record paths (one HarnessError, exit 2).

        Returns the cells with ``limit`` dropped where it covers the whole evaluation split.
        """
        check_executor(executor)
        missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
        if missing and any(cell.deploy for cell in cells):
            raise HarnessError(f"--deploy onnxruntime needs the deploy extra ({', '.join(missing)} missing): "
                               "pip install -e '.[deploy]'")
        self.store.check_writable()
        check_cache_dir()
        sizes = {}
        for cell in cells:
            if (cell.task, cell.model) not in sizes:
                task = self.worker.task(cell)
                task.check_environment(cell.model)
                task.check_weights(cell.model)
                sizes[cell.task, cell.model] = task.evaluation_size(cell.model) if cell.limit else None
        cells = [dataclasses.replace(cell, limit=None)
                 if cell.limit and sizes[cell.task, cell.model] is not None and cell.limit >= sizes[cell.task, cell.model]
                 else cell for cell in cells]
        for cell in cells:
            path = self.store.path(self.worker.keys(cell).cell_id)
            if path.exists() and not path.is_file():
                raise HarnessError(f"{path} should be a record file but is a {_kind(path)}; move it away and rerun")
        return cells


def _kind(path: Path) -> str:
    return "directory" if path.is_dir() else "special file"
