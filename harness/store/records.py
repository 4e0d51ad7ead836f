"""The result store: one JSON record per cell, written atomically, named by the cell id (docs/results.md).

It also holds the cached calibration sets of bit-independent generators, as safetensors files
(tensors) with their metadata as JSON inside: reading a cache never unpickles anything, so a shared
results folder cannot run code.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import tempfile
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from harness.errors import HarnessError
from harness.plugin.method import CalibrationSet
from harness.plugin.task import METRIC_RANGE, ImagePrior
from harness.store.io import atomic_write, write_json
from harness.store.paths import PROJECT_ROOT
from harness.store.schema import (MISSING, boolean, fields, finite_number, integer, list_of, mapping_of, nullable,
                            number_within, read_json, shown, text)

RECORD_SCHEMA = 2  # 2: records carry the code versions and source digests that made them
TRACKED_PACKAGES = ("torch", "torchvision", "timm", "numpy", "scikit-learn", "pandas", "mmdet", "mmsegmentation", "mmengine")


class ResultStore:
    """``<root>/records/<cell_id>.json``; only records with status ``ok`` count as finished."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.records_dir = self.root / "records"

    def path(self, cell_id: str) -> Path:
        return self.records_dir / f"{cell_id}.json"

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

    def calibration_entries(self) -> Iterator["CachedCalibration"]:
        """Every usable cached calibration set, in path order; torn, altered or foreign files are skipped
        (the run that needs one names it and regenerates it: :func:`load_calibration`)."""
        for path in sorted((self.root / "cache" / "generators").glob(f"*/*{CALIBRATION_SUFFIX}")):
            entry = load_calibration(path)[0]
            if entry is not None:
                yield entry


CALIBRATION_SUFFIX = ".safetensors"


def _input_size(value: Any, where: str) -> str | None:
    """A prior's ``(C, H, W)``: three positive integers, the shape every cached image must have."""
    if (problem := list_of(integer)(value, where)) is not None:
        return problem
    return None if len(value) == 3 and min(value) > 0 else f"{where} is {shown(value)}, expected [channels, height, width]"


_COMPONENT = fields({"version": text, "digest": text}, required=("version", "digest"))
# the header's ``meta`` as harness.run.worker writes it and as the worker, the gallery and exports read it
CALIBRATION_META = fields({
    "generator": text, "model": text, "seed": integer, "options": fields({}),
    "prior": fields({"input_size": _input_size, "mean": list_of(finite_number), "std": list_of(finite_number),
                     "num_classes": nullable(integer)}, required=("input_size", "mean", "std", "num_classes")),
    "code": fields({"generator": _COMPONENT, "task": _COMPONENT}, required=("generator", "task")),
    "generate_seconds": number_within(0, math.inf),
}, required=("generator", "model", "seed", "options", "prior", "code", "generate_seconds"))


@dataclasses.dataclass
class CachedCalibration:
    """A cached calibration set and what made it: generator, model, seed, options, prior, code, seconds."""

    path: Path
    calibration: CalibrationSet
    meta: dict[str, Any]

    @property
    def prior(self) -> ImagePrior:
        prior = self.meta["prior"]
        return ImagePrior(input_size=tuple(prior["input_size"]), mean=tuple(prior["mean"]), std=tuple(prior["std"]),
                          num_classes=prior["num_classes"])


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of each tensor's name, dtype, shape and bytes: images altered under an intact header
    (zeroed, another set's) no longer match the digest written beside them."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_calibration(path: Path, calibration: CalibrationSet, meta: dict[str, Any]) -> None:
    """Images (and labels) as safetensors; ``meta``, the set's info and the tensors' digest as JSON in the header."""
    tensors = {"images": calibration.images.detach().cpu().contiguous()}
    if calibration.labels is not None:
        tensors["labels"] = calibration.labels.detach().cpu().contiguous()
    header = {"meta": json.dumps(meta, sort_keys=True), "info": json.dumps(calibration.info, sort_keys=True),
              "digest": tensor_digest(tensors)}
    atomic_write(path, lambda handle: handle.write(save(tensors, metadata=header)))


def read_calibration(path: Path) -> CachedCalibration | None:
    """A usable cache entry, or None when absent or not usable (:func:`load_calibration` says why)."""
    return load_calibration(path)[0]


def load_calibration(path: Path, prior: ImagePrior | None = None) -> tuple[CachedCalibration | None, str | None]:
    """A cached calibration set: ``(entry, None)`` when usable, ``(None, why)`` when not, ``(None, None)`` when absent.

    Usable means what :func:`write_calibration` wrote, unchanged: a header of the declared shape
    (:data:`CALIBRATION_META`), tensors matching its digest, finite images of the prior's shape (the
    task's ``prior`` where given, else the header's) and one label per image. A set without a digest
    predates digests and cannot be checked, so it is not usable either (docs/results.md).
    """
    if not path.exists():
        return None, None
    try:
        with safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, SafetensorError, ValueError) as error:
        return None, f"not a safetensors file ({str(error).strip()[:60] or type(error).__name__}; torn or replaced)"
    meta, info, problem = _calibration_header(header)
    if problem is None and header["digest"] != tensor_digest(tensors):
        problem = "its tensors differ from the digest in its header (altered images or labels)"
    entry = None if problem is not None else CachedCalibration(path, CalibrationSet(
        images=tensors.get("images"), labels=tensors.get("labels"), info=info), meta)
    if entry is not None:
        problem = _calibration_problem(entry, prior or entry.prior)
    return (None, problem) if problem is not None else (entry, None)


def _calibration_header(header: dict[str, str]) -> tuple[Any, Any, str | None]:
    """The header's ``meta`` and ``info``, or why the header is not what :func:`write_calibration` writes."""
    if "digest" not in header:
        return None, None, "no digest of its tensors in its header (written before digests were stored)"
    try:
        meta, info = json.loads(header["meta"]), json.loads(header["info"])
    except (KeyError, ValueError):
        return None, None, "its header's meta or info is missing or not valid JSON"
    if (problem := CALIBRATION_META(meta, "meta")) is not None:
        return None, None, problem
    return meta, info, None if isinstance(info, dict) else f"info is {shown(info)}, expected a mapping"


def _calibration_problem(entry: CachedCalibration, prior: ImagePrior) -> str | None:
    """Why a set whose header and digest hold cannot calibrate a model of ``prior``: shapes, values, labels."""
    images, labels = entry.calibration.images, entry.calibration.labels
    if images is None or not images.is_floating_point() or images.ndim != 4 or images.shape[0] == 0:
        return f"images {_described(images)}, expected a floating (N, C, H, W) tensor"
    if tuple(images.shape[1:]) != tuple(prior.input_size):
        return f"images of shape {tuple(images.shape[1:])}, expected the prior's {tuple(prior.input_size)}"
    if entry.prior != prior:
        return f"its header's prior {entry.prior} differs from the task's {prior}"
    if not len(prior.mean) == len(prior.std) == prior.input_size[0]:  # de-normalizing (the gallery) needs one per channel
        return f"meta.prior has {len(prior.mean)} means and {len(prior.std)} stds for {prior.input_size[0]} channels"
    if not torch.isfinite(images).all():
        return "images hold NaN or infinite values"
    if labels is not None and (labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != images.shape[:1]):
        return f"labels {_described(labels)}, expected one integer label for each of the {images.shape[0]} images"
    return None


def _described(tensor: torch.Tensor | None) -> str:
    return "missing" if tensor is None else f"{tensor.dtype} of shape {tuple(tensor.shape)}"


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


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def harness_commit() -> str:
    """The harness's git commit, with ``+dirty`` when the work tree has changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def provenance() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}",
    }


class PeakMemory:
    """Peak resident memory (MiB) while the block runs, sampled from /proc; plus CUDA peak if used."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss_mb(self) -> float:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_mb = max(self.peak_rss_mb, self._rss_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss_mb = max(self.peak_rss_mb, self._rss_mb())

    def summary(self) -> dict[str, float]:
        result = {"peak_rss_mb": round(self.peak_rss_mb, 1)}
        if torch.cuda.is_available():
            result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return result
