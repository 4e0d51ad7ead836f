"""``harness.benchmark(...)``: a grid run in this process, its leaderboard returned as pandas DataFrames.

The same grid as ``python -m harness run`` with the same settings: the keywords are the ``run`` flags
(``--gen-opt`` is ``gen_opt``, a mapping or a list of ``KEY=VALUE``), read and checked as a ``--grid`` file's
keys are (harness.run.gridfile), and the grid goes through the CLI's own runner call (:func:`harness.entry.cli.run_grid`),
so cells, caches and records are shared both ways: what one made, the other finds finished (README, From Python).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

if TYPE_CHECKING:
    import pandas as pd

# keywords that say where and how the grid runs, beside the grid's own (harness.run.gridfile.GRID_KEYS)
RUN_KEYWORDS = ("grid", "results", "device", "threads", "executor", "executor_opt", "force", "recompute_stale",
                "skip_unsupported", "progress", "report")


@dataclass
class BenchmarkResult:
    """What :func:`benchmark` returns.

    ``cells``: one row per finished cell of the grid (``reports.aggregate.records_frame``: identity, options'
    subset, ``metric.*``, ``fp.*``, ``time.*``, ...). ``leaderboard``: one row per method at one bit width on one
    model and evaluation subset, over seeds (``reports.aggregate.seed_stats`` of each task's primary metric,
    named in ``metric``: ``mean``, ``std``, ``seeds``, ``fp``, ``drop``), what the CLI prints after ``run``.
    ``records``: the records themselves, failed cells' error records included; ``computed``, ``skipped``
    (already finished) and ``failed`` count them as ``run`` does.
    """

    cells: pd.DataFrame
    leaderboard: pd.DataFrame
    records: list[dict[str, Any]] = field(repr=False)
    computed: int
    skipped: int
    failed: int
    results: Path


def benchmark(methods: Any = None, tasks: Any = None, bits: Any = None, seeds: Any = None, *,
              grid: str | Path | None = None, results: str | Path = "results", device: str = "cpu",
              threads: int | None = None, executor: str = "local", executor_opt: Any = None, force: bool = False,
              recompute_stale: bool = False, skip_unsupported: bool = False, progress: bool = True,
              report: bool = False, **settings: Any) -> BenchmarkResult:
    """Run methods x tasks x models x bits x seeds into ``results`` and return the leaderboard.

    ``methods``, ``tasks``, ``bits`` and ``seeds`` and ``settings`` take what the ``run`` flags and a grid file
    take (``models``, ``data``, ``calib``, ``tune``, ``gen_opt``, ``calib_opt``, ``task_opt``, ``tune_opt``,
    ``data_root``, ``checkpoint``, ``batch_size``, ``profile``, ``attn_quantizer``, ``keep_first_last_fp``,
    ``limit``, ``deploy``): a list or a comma-separated string of names, an option mapping; unset ones take
    the ``grid`` file's values, then ``run``'s defaults. The rest are ``run``'s flags: ``threads`` sets
    torch's CPU threads as ``run`` does (one per available core when None), ``report=True`` rewrites
    ``RESULTS/report`` (``run`` does unless ``--no-report``). Finished cells are reused, not recomputed.

    A bad argument raises :class:`harness.errors.HarnessError` with the CLI's one-line message.
    """
    from harness.entry.cli import print_summary, report_after_run, run_grid, set_threads
    from harness.entry.listing import keep_cache_current
    from harness.plugin.options import parse_assignments
    from harness.run.executor_names import EXECUTORS
    from harness.run.gridfile import GRID_FILE, GRID_KEYS, load_grid_file, spec_from_settings
    from harness.store.schema import fields

    unknown = [key for key in settings if key not in GRID_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], (*GRID_KEYS, *RUN_KEYWORDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise HarnessError(f"benchmark() got an unknown keyword {unknown[0]!r}{hint}; accepted: "
                           f"{', '.join((*GRID_KEYS, *RUN_KEYWORDS))}")
    given = {"methods": methods, "tasks": tasks, "bits": bits, "seeds": seeds, **settings}
    given = {key: list(value) if isinstance(value, (tuple, range)) else value
             for key, value in given.items() if value is not None}
    if (problem := fields(GRID_FILE)(given, "")) is not None:
        raise HarnessError(f"benchmark(): {problem}")
    for name, value in (("force", force), ("recompute_stale", recompute_stale), ("skip_unsupported", skip_unsupported),
                        ("progress", progress), ("report", report)):
        if not isinstance(value, bool):
            raise HarnessError(f"benchmark(): {name} is {value!r}, expected True or False")
    if executor not in EXECUTORS:
        raise HarnessError(f"benchmark(): executor is {executor!r}; accepted: {', '.join(EXECUTORS)}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)):
        raise HarnessError(f"benchmark(): threads is {threads!r}, expected a positive number")
    if not isinstance(results, (str, Path)):
        raise HarnessError(f"benchmark(): results is {results!r}, expected a folder path")
    if isinstance(executor_opt, str):
        executor_opt = [executor_opt]
    executor_options = (dict(executor_opt) if isinstance(executor_opt, dict)
                        else parse_assignments(list(executor_opt or []), "executor"))

    keep_cache_current()
    results = Path(results)
    set_threads(threads)
    spec = spec_from_settings({**(load_grid_file(Path(grid)) if grid is not None else {}), **given})
    summary = run_grid(spec, results, device=device, executor=executor, executor_options=executor_options,
                       force=force, recompute_stale=recompute_stale, skip_unsupported=skip_unsupported,
                       progress=progress)
    print_summary(summary, results, "the same benchmark(...) call with recompute_stale=True")
    if report:
        report_after_run(results)
    cells, board = leaderboard_frames(summary.records)
    return BenchmarkResult(cells, board, summary.records, summary.computed, summary.skipped, summary.failed, results)


def leaderboard_frames(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per finished cell, and per task the seed statistics of its primary metric (as ``run`` prints)."""
    import pandas as pd

    from reports.aggregate import primary_metric, records_frame, seed_stats

    cells = records_frame(records)
    if cells.empty:
        return cells, pd.DataFrame(columns=["task", "metric", "model", "subset", "label", "method", "published_as",
                                            "bits", "mean", "std", "seeds", "fp", "drop"])
    boards = []
    for _, task_frame in cells.groupby("task", sort=True):
        metric = primary_metric(task_frame.dropna(axis=1, how="all"))
        stats = seed_stats(task_frame, metric)
        stats.insert(1, "metric", metric.removeprefix("metric."))
        boards.append(stats)
    return cells, pd.concat(boards, ignore_index=True)
