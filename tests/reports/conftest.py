"""Handmade result records in the runner's format (docs/results.md), written as JSON files like ``harness run`` does."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from harness.errors import HarnessError
from harness.run.grid import component_code

FP_TOP1 = 72.30  # deit_tiny's published FP is 72.21, so the FP gap is +0.09

# (label, method, generator, calibrator, bits, seed, top1, limit): the grid the report tests read back.
CELLS = [
    ("psaq", "psaq", "psaq", "minmax", "w8a8", 0, 71.0, None),
    ("psaq", "psaq", "psaq", "minmax", "w8a8", 1, 72.0, None),
    ("psaq", "psaq", "psaq", "minmax", "w8a8", 2, 73.0, None),
    ("psaq", "psaq", "psaq", "minmax", "w4a8", 0, 65.0, None),
    ("psaq", "psaq", "psaq", "minmax", "w4a8", 1, 66.0, None),
    ("noise", "noise", "noise", "minmax", "w8a8", 0, 70.25, None),
    ("noise", "noise", "noise", "minmax", "w4a4", 0, 17.0, None),
    ("noise", "noise", "noise", "minmax", "w4a4", 1, 18.0, None),
    ("psaq (psaq+ranking)", "psaq", "psaq", "ranking", "w8a8", 0, 72.5, None),
    ("psaq", "psaq", "psaq", "minmax", "w8a8", 0, 50.0, 100),
]


def make_record(label: str = "psaq", method: str = "psaq", generator: str = "psaq", calibrator: str = "minmax",
                task: str = "imagenet", model: str = "deit_tiny_patch16_224", bits: str = "w8a8", seed: int = 0,
                top1: float = 70.0, fp: float = FP_TOP1, limit: int | None = None, status: str = "ok",
                code: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record as the runner writes it; ``code`` defaults to the checkout's code of its components."""
    identity = {"method": method, "generator": generator, "calibrator": calibrator, "task": task, "model": model,
                "bits": bits, "seed": seed, "label": label, "limit": limit}
    record = {
        "schema": 2, "cell_id": hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16],
        "weights_id": "0123456789abcdef", **{k: v for k, v in identity.items() if k != "limit"},
        "options": {"generator": {"num_images": 32}, "calibrator": {}, "limit": limit,
                    "quant": {"profile": "standard", "attn_quantizer": "uniform", "keep_first_last_fp": False},
                    "task": {"batch_size": 64, "checkpoint": None, "data_root": None}},
        "harness_commit": "abc123", "versions": {"python": "3.11.7", "torch": "2.14.1"},
        "code": code if code is not None else _current_code(task, generator, calibrator, bits),
        "date": f"2026-01-0{seed + 1}T12:00:00+00:00", "host": "testhost", "pid": 1,
        "machine": "Linux x86_64, 2 cpus, torch threads 2",
        "timing_s": {"generate": 10.0 + seed, "calibrate": 0.5, "evaluate": 2.0},
        "memory": {"peak_rss_mb": 1000.0 + seed}, "status": status,
    }
    if status == "ok":
        record.update(metrics={"top1": top1, "top5": 90.0}, fp_metrics={"top1": fp, "top5": 91.0},
                      num_calibration_images=32, generator_cache_hit=seed > 0)
    else:
        record.update(error="RuntimeError: out of memory", traceback="...")
    return record


def _current_code(task: str, generator: str, calibrator: str, bits: str) -> dict[str, Any]:
    try:
        return component_code(task, *(() if bits == "fp" else (generator, calibrator)))
    except HarnessError:  # a plugin name made up for a test (markup, a removed plugin): no current code
        return {}


def write_records(results: Path, records: list[dict[str, Any]]) -> Path:
    (results / "records").mkdir(parents=True, exist_ok=True)
    for record in records:
        (results / "records" / f"{record['cell_id']}.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    return results


@pytest.fixture(scope="session")
def grid_records() -> list[dict[str, Any]]:
    """The CELLS grid plus one failed cell, which the tables must leave out."""
    cells = [make_record(label=label, method=method, generator=generator, calibrator=calibrator, bits=bits, seed=seed,
                         top1=top1, limit=limit)
             for label, method, generator, calibrator, bits, seed, top1, limit in CELLS]
    return [*cells, make_record(label="noise", method="noise", generator="noise", bits="w4a3", status="error")]


@pytest.fixture
def grid_results(tmp_path: Path, grid_records: list[dict[str, Any]]) -> Path:
    return write_records(tmp_path / "results", grid_records)


@pytest.fixture(name="make_record", scope="session")
def make_record_fixture() -> Callable[..., dict[str, Any]]:
    return make_record


@pytest.fixture(name="write_records", scope="session")
def write_records_fixture() -> Callable[[Path, list[dict[str, Any]]], Path]:
    return write_records
