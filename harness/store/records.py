"""The result store: one JSON record per cell, written atomically, named by the cell id (docs/results.md),
validated whenever it is read back; and the paths of everything else the store keeps (FP metrics, cached
calibration sets: harness.store.calibration_cache). The keys those paths are named by: harness.store.keys.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from harness.errors import HarnessError
from harness.plugin.task import METRIC_RANGE
from harness.store.calibration_cache import CALIBRATION_SUFFIX, CachedCalibration, load_calibration
from harness.store.io import write_json
from harness.store.keys import RECORD_SCHEMA, CellKeys
from harness.store.schema import (MISSING, boolean, fields, finite_number, integer, list_of, mapping_of, number_within,
                                  read_json, shown, text)


class ResultStore:
    """``<root>/records/<cell_id>.json``; only records with status ``ok`` count as finished."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"

    def path(self, cell_id: str) -> Path:
        return self.records_dir / f"{cell_id}.json"

    def fp_metric_path(self, keys: CellKeys) -> Path:
        return self.root / "fp" / f"{keys.fp_metric_name}.json"

    def lock_path(self, cell_id: str) -> Path:
        return self.root / "locks" / f"{cell_id}.lock"

    def finished(self, cell_id: str) -> dict[str, Any] | None:
        """The cell's record if it is valid and ``ok``; an invalid one never counts as finished."""
        record, problem = load_record(self.path(cell_id))
        return record if record is not None and problem is None and record["status"] == "ok" else None

    def check_writable(self) -> None:
        """A one-line error, before any cell runs, when records cannot be written here."""
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.records_dir, prefix=".probe."):
                pass
        except OSError as error:
            raise HarnessError(f"results folder {self.root} is not usable ({error.strerror or error}: "
                               f"{error.filename or self.records_dir}); pass --results DIR, a writable folder") from None

    def failure_path(self, cell_id: str) -> Path:
        return self.root / "failures" / f"{cell_id}.json"

    def write(self, record: dict[str, Any]) -> Path:
        """Atomic: a failed write (disk full, permissions) leaves every other record as it was.

        A failed recompute (``--force``, ``--recompute-stale``) never replaces a finished record: it
        is written to ``failures/`` beside it, and the record says which finished one was kept.
        """
        path = self.path(record["cell_id"])
        if record.get("status") != "ok" and self.finished(record["cell_id"]) is not None:
            record["kept_finished_record"] = str(path)
            path = self.failure_path(record["cell_id"])
        elif load_record(path)[1] is not None:  # an invalid record is set aside, never overwritten
            record["replaced_invalid_record"] = str(self._set_aside(path))
        try:
            write_json(path, record)
        except OSError as error:
            raise HarnessError(f"cannot write record {path}: {error.strerror or error}; finished records are kept, "
                               "rerun the same command once the problem is fixed") from error
        return path

    def _set_aside(self, path: Path) -> Path:
        aside = self.root / "invalid" / f"{path.stem}.{datetime.datetime.now():%Y%m%dT%H%M%S%f}.json"
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, aside)
        return aside

    def records(self) -> Iterator[dict[str, Any]]:
        """Every valid record (``ok`` or ``error``); :meth:`invalid_records` names the others."""
        for path in sorted(self.records_dir.glob("*.json")):
            record, problem = load_record(path)
            if record is not None and problem is None:
                yield record

    def invalid_records(self, set_aside: bool = False) -> list["InvalidRecord"]:
        """Files in the records folder that are not valid records of this schema, and why; with
        ``set_aside``, also those moved to ``invalid/`` when their cell was recomputed."""
        invalid = []
        for path in sorted(self.records_dir.glob("*.json")):
            problem = load_record(path)[1]
            if problem is not None:
                invalid.append(InvalidRecord(path, problem))
        for path in sorted((self.root / "invalid").glob("*.json")) if set_aside else ():
            invalid.append(InvalidRecord(path, f"set aside, its cell recomputed: {load_record(path)[1]}"))
        return invalid

    def calibration_path(self, generator: str, key: str) -> Path:
        return self.root / "cache" / "generators" / generator / f"{key}{CALIBRATION_SUFFIX}"

    def calibration_entries(self) -> Iterator[CachedCalibration]:
        """Every usable cached calibration set, in path order; torn, altered or foreign files are skipped
        (the run that needs one names it and regenerates it: :func:`load_calibration`)."""
        for path in sorted((self.root / "cache" / "generators").glob(f"*/*{CALIBRATION_SUFFIX}")):
            entry = load_calibration(path)[0]
            if entry is not None:
                yield entry


@dataclasses.dataclass(frozen=True)
class InvalidRecord:
    """A file where a record should be that cannot be used: torn, edited, another schema, a directory."""

    path: Path
    problem: str


_IDENTITY_TYPES = {"cell_id": str, "method": str, "task": str, "model": str, "bits": str, "seed": int,
                   "label": str, "weights_id": str, "options": dict}
_CPU = fields({"model": text, "arch": text, "extensions": list_of(text)})
_CODE = mapping_of(fields({"version": text, "digest": text}))
# what a deployable block must hold: the report's deployment columns (reports/aggregate.py, _deployment_columns)
_SPEEDUP = fields({"batch1": finite_number, "batch32": finite_number}, required=("batch1", "batch32"))
_DEPLOYED = fields({"speedup": _SPEEDUP, "size_ratio": finite_number, "metrics": mapping_of(finite_number),
                    "difference": mapping_of(finite_number)},
                   required=("speedup", "size_ratio", "metrics", "difference"))
_DEPLOYMENT = fields({"deployable": boolean, "reason": text, "runtime": text, "version": text,
                      "execution_provider": text, "threads": integer, "weight_types": list_of(text), "cpu": _CPU})


def _deployment(value: Any, where: str) -> str | None:
    """The ``deployment`` block (harness.deploy.export.measure_deployment), with its figures where it was deployable."""
    if (problem := _DEPLOYMENT(value, where)) is not None:
        return problem
    return _DEPLOYED(value, where) if value.get("deployable") else None


# Optional fields of a record and the shapes the run, the dry run and the report read them in
# (docs/results.md, Records are validated on read); a record without one is valid, one with a
# malformed one is not.
OPTIONAL_FIELDS = fields({
    "timing_s": mapping_of(finite_number),
    "memory": mapping_of(finite_number),
    "code": _CODE,
    "versions": mapping_of(text),
    "kernels": fields({"device": text, "torch": text, "torch_cpu": text, "fused": text, "gpu": text, "cpu": _CPU}),
    "deployment": _deployment,
    "tuner": text,
    "tuner_info": fields({}),
})


def load_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` for a valid record, ``(record or None, why)`` for an invalid one, ``(None, None)`` if absent.

    A record's identity is its content: it is valid only in the file its ``cell_id`` names
    (``records/<cell_id>.json``), so a copy or a renamed record never counts as another cell or seed,
    and a record found under a cell's name is always that cell's.
    """
    if not path.exists():
        return None, None
    if not path.is_file():
        return None, "a directory or special file, not a record"
    record, problem = read_json(path)
    if problem is not None:
        return None, problem
    problem = record_problem(record)
    if problem is None and record["cell_id"] != path.stem:
        problem = (f"its cell_id {record['cell_id']!r} differs from its file name (a copy or a renamed record); "
                   "a record counts only in the file its cell_id names")
    return record, problem


def record_problem(record: Any) -> str | None:
    """Why ``record`` is not a valid record of :data:`RECORD_SCHEMA` (docs/results.md, Records), or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("schema") != RECORD_SCHEMA:
        return f"schema {record.get('schema')!r}; this harness reads schema {RECORD_SCHEMA}"
    for key, kind in _IDENTITY_TYPES.items():
        value = record.get(key, MISSING)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"field {key!r} is {shown(value)}, expected {kind.__name__}"
    if (problem := OPTIONAL_FIELDS(record, "")) is not None:
        return problem
    if record.get("status") == "error":
        return None if isinstance(record.get("error"), str) else "an error record without its error message"
    if record.get("status") != "ok":
        return f"status {record.get('status')!r}; expected 'ok' or 'error'"
    for key in ("metrics", "fp_metrics"):
        metrics = record.get(key, MISSING)
        if not isinstance(metrics, dict) or not metrics:
            return f"field {key!r} is {shown(metrics)}, expected metric names with numbers"
        if (problem := mapping_of(finite_number)(metrics, key)) is not None:
            return problem
    return None


def read_fp_metric(path: Path, metric_names: tuple[str, ...]) -> tuple[dict[str, Any] | None, str | None]:
    """A cached FP metric file (harness.run.worker): ``(content, None)`` when usable, ``(None, why)`` when not,
    ``(None, None)`` when absent. Usable means exactly the task's metrics, each a finite number in the
    task's range (:data:`harness.plugin.task.METRIC_RANGE`), and code a record could hold: anything else would be
    copied into every record that uses it."""
    if not path.exists():
        return None, None
    cached, problem = read_json(path)
    if problem is None and not isinstance(cached, dict):
        problem = "not a JSON object"
    if problem is not None or (problem := _FP_METRIC(cached, "")) is not None:
        return None, problem
    if set(cached["metrics"]) != set(metric_names):
        return None, f"metrics {sorted(cached['metrics'])}, expected the task's {sorted(metric_names)}"
    return cached, None


_FP_METRIC = fields({"metrics": mapping_of(number_within(*METRIC_RANGE)), "code": _CODE}, required=("metrics",))
