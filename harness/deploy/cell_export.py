"""Export a finished cell's calibrated model to ONNX (docs/deploy.md, Exporting a cell): the cell is
rebuilt by the per-cell worker, the model exported by harness.deploy.export."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from harness.deploy.export import deployability, export_onnx
from harness.errors import HarnessError
from harness.run.grid import cell_from_record
from harness.run.worker import CellWorker
from harness.store.paths import check_writable_folder
from harness.store.records import ResultStore, load_record


def export_cell(results: Path, cell_id: str, path: Path, device: str = "cpu", overwrite: bool = False) -> Path:
    """Rebuild a finished cell's calibrated model from its record and export it (docs/deploy.md, Exporting a cell).

    The model is recalibrated with the record's configuration; a generator's cached calibration set
    is reused. An unusable output path (see :func:`check_output_path`), a missing or unfinished
    record, a record made for other weights or code versions, or a placement without an integer
    form is one HarnessError.
    """
    check_output_path(path, results, overwrite)
    store = ResultStore(results)
    if not re.fullmatch(r"[0-9a-f]{16}", cell_id):
        raise HarnessError(f"malformed cell id {cell_id!r}: a cell id is 16 hexadecimal digits (records/<id>.json)")
    record, problem = load_record(store.path(cell_id))
    if record is None or problem is not None:
        raise HarnessError(f"no valid record for cell {cell_id} in {store.records_dir}"
                           + (f" ({problem})" if problem else ""))
    if record["status"] != "ok":
        raise HarnessError(f"cell {cell_id} did not finish (status {record['status']}); rerun its grid first")
    if record["bits"] == "fp":
        raise HarnessError(f"cell {cell_id} is an FP cell: there is no quantized model to export")
    cell = cell_from_record(record)
    worker = CellWorker(results, device=device)
    if worker.keys(cell).cell_id != cell_id:
        raise HarnessError(f"cell {cell_id} was computed with other weights or component versions than this "
                           "checkout's; rerun its grid to export it")
    qmodel, task = worker.calibrated_model(cell)
    if task.quantized_part(qmodel) is not qmodel:
        raise HarnessError(f"task {cell.task!r} quantizes {task.quantization_scope()}: export covers whole classifiers only")
    check = deployability(qmodel)
    if not check.deployable:
        raise HarnessError(f"cell {cell_id} is {check.summary()}")
    example = torch.zeros(2, *task.prior(cell.model).input_size)
    try:
        return export_onnx(qmodel.cpu(), example, path, overwrite=overwrite)
    except FileExistsError:  # created by someone else while the cell was recalibrated
        raise HarnessError(_exists_message(path)) from None


def check_output_path(path: Path, results: Path, overwrite: bool) -> None:
    """Refuse, before minutes of recalibration, a path that cannot take the file or must not: anything in
    the results folder (records, caches: an export once wrote over a finished record, issue 31), an
    existing file unless ``overwrite``, a directory, or a path under a file."""
    resolved = path.resolve()
    if resolved == results.resolve() or results.resolve() in resolved.parents:
        raise HarnessError(f"output path {path} is inside the results folder {results}; "
                           "name a file outside it (the results folder holds only what runs write)")
    if path.is_dir():
        raise HarnessError(f"output path {path} is a directory; name the ONNX file to write, e.g. {path / 'model.onnx'}")
    blocking = next((parent for parent in path.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise HarnessError(f"output path {path} is under {blocking}, which is a file; name a file in a folder")
    if os.path.lexists(path) and not overwrite:  # a dangling link counts: os.link would not replace it either
        raise HarnessError(_exists_message(path))
    check_writable_folder(path.parent, f"output path {path}")  # a read-only or full folder, before recalibrating


def _exists_message(path: Path) -> str:
    return f"output path {path} already exists; pass --overwrite to replace it, or name a new file"
