"""Where cells run: in this process (``local``), one subprocess per cell (``isolated``), Ray tasks
(``ray``) or Slurm jobs through submitit (``slurm``; ``submitit-local`` runs the same path locally).

Every backend runs :func:`execute_cell`, which settles one cell under its lock in the shared
results directory, so backends differ only in where that function runs. A worker that dies
(out of memory, killed, lost node) becomes an error record written by the coordinating process.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Iterator

from harness.errors import HarnessError
from harness.progress import progress_enabled, set_progress
from harness.run.executor_names import EXECUTORS
from harness.run.grid import Cell
from harness.run.worker import CellWorker, Outcome
from harness.store.paths import cache_dir
from harness.store.records import load_record

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def execute_cell(out: str, device: str, force: bool, recompute_stale: bool, progress: bool, cell: Cell) -> Outcome:
    """Compute (or reuse) one cell in whatever process this runs in: the unit of remote work."""
    set_progress(progress)
    return CellWorker(Path(out), device=device, force=force, recompute_stale=recompute_stale).settle(cell, blocking=True)


def map_cells(executor: str, worker: CellWorker, cells: list[Cell], options: dict[str, Any]) -> Iterator[Outcome]:
    """Outcomes of ``cells`` in order, computed by ``executor``."""
    backends = {"isolated": _isolated, "ray": _ray, "slurm": _submitit, "submitit-local": _submitit}
    if executor not in backends:
        raise HarnessError(f"unknown executor {executor!r}; accepted: {', '.join(EXECUTORS)}")
    if not cells:
        return iter(())
    return backends[executor](executor, worker, cells, options)


def check_executor(executor: str) -> None:
    """Before the grid: the backend's package is installed (and for Slurm, its commands are on PATH)."""
    if executor == "local" or executor == "isolated":
        return
    _require("ray" if executor == "ray" else "submitit", "ray" if executor == "ray" else "submitit")
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise HarnessError("--executor slurm needs Slurm's sbatch on PATH (none here); "
                           "use --executor submitit-local to try the same path on this machine")


def _arguments(worker: CellWorker) -> tuple[str, str, bool, bool, bool]:
    return str(worker.store.root), str(worker.device), worker.force, worker.recompute_stale, progress_enabled()


def _die_with_parent(parent: int) -> None:
    """In an isolated worker: end when the runner ends (SIGTERM, SIGHUP, SIGKILL), never orphaned holding a lock.

    Linux delivers SIGTERM to the worker when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere the
    worker keeps today's behaviour.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the runner died before the request took effect
        os._exit(1)


def _isolated(executor: str, worker: CellWorker, cells: list[Cell], options: dict[str, Any]) -> Iterator[Outcome]:
    """A fresh spawned process per cell: a crash or an out-of-memory kill costs one cell only."""
    context = multiprocessing.get_context("spawn")
    for cell in cells:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_die_with_parent,
                                                    initargs=(os.getpid(),)) as pool:
            try:
                yield pool.submit(execute_cell, *_arguments(worker), cell).result()
            except concurrent.futures.process.BrokenProcessPool:
                yield worker.record_failure(cell, "worker process died (killed or out of memory)")


def _ray(executor: str, worker: CellWorker, cells: list[Cell], options: dict[str, Any]) -> Iterator[Outcome]:
    """Cells as Ray tasks; each asks for one GPU when the device is CUDA (``RAY_ADDRESS`` picks a cluster)."""
    ray = _require("ray", "ray")
    if not ray.is_initialized():
        ray.init(address=options.pop("address", None), include_dashboard=False, log_to_driver=False)
    resources = {"num_cpus": 1, "num_gpus": 1 if worker.device.type == "cuda" else 0, "max_retries": 0, **options}
    task = ray.remote(**resources)(execute_cell)
    references = [task.remote(*_arguments(worker), cell) for cell in cells]
    for reference, cell in zip(references, cells):
        try:
            yield ray.get(reference)
        except ray.exceptions.RayError as error:
            yield worker.record_failure(cell, f"ray worker failed: {str(error).strip().splitlines()[0]}")


def _submitit(executor: str, worker: CellWorker, cells: list[Cell], options: dict[str, Any]) -> Iterator[Outcome]:
    """One submitit job per cell; ``slurm`` submits to Slurm, ``submitit-local`` runs the jobs here.

    submitit keeps its jobs as pickles in its folder and unpickles them there, so that folder is a fresh
    one under the harness cache (on a cluster, home is shared by the nodes), never in the results folder,
    where nothing is unpickled (docs/results.md). Results come back through the record files only: a
    job's returned pickle is never read (issue 31).
    """
    submitit = _require("submitit", "submitit")
    cluster = "slurm" if executor == "slurm" else "local"
    backend = submitit.AutoExecutor(folder=str(submitit_folder()), cluster=cluster)
    gpus = 1 if worker.device.type == "cuda" else 0
    backend.update_parameters(**{"timeout_min": 240, "gpus_per_node": gpus, "cpus_per_task": 2, **options})
    stamps = [_record_stamp(worker, cell) for cell in cells]
    jobs = [backend.submit(execute_cell, *_arguments(worker), cell) for cell in cells]
    for job, cell, before in zip(jobs, cells, stamps):
        job.wait()
        yield _written_record(worker, cell, before, f"submitit job {job.job_id} ({job.state}; log "
                                                          f"{job.paths.stderr})")


def submitit_folder() -> Path:
    """A new folder per grid under ``<cache>/submitit``: nothing planted beforehand can share a job's name."""
    parent = cache_dir() / "submitit"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix="jobs."))


def _record_stamp(worker: CellWorker, cell: Cell) -> int | None:
    """When the cell's record file last changed (None: no file), to tell a job's record from an older one."""
    try:
        return worker.store.path(worker.keys(cell).cell_id).stat().st_mtime_ns
    except OSError:
        return None


def _written_record(worker: CellWorker, cell: Cell, before: int | None, job: str) -> Outcome:
    """The record the job wrote for ``cell``, read as any record is (validated JSON); a job that wrote none
    (killed, out of memory, failed to start) becomes an error record naming the job."""
    path = worker.store.path(worker.keys(cell).cell_id)
    record, problem = load_record(path)
    if record is None or problem is not None or _record_stamp(worker, cell) == before:
        return worker.record_failure(cell, f"{job} wrote no valid record at {path}")
    return record, True


def _require(module: str, package: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise HarnessError(f"this executor needs {package}: pip install -e '.[cluster]'") from None
