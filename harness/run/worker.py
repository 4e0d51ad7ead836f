"""The per-cell worker: one cell from its task's model and data through generator, calibrator and
evaluation to its record.

Resumable: a cell whose ``ok`` record exists is reused, never recomputed. A failing cell becomes an
error record. Several workers may share one results directory: a per-cell lock makes each cell
computed once. Every record, cached calibration set and cached FP metric carries the code versions
and source digests that made it (harness.store.code_version): what other code made is named (``stale``)
and recomputed only on request (``recompute_stale``), never reused without a word. Which cells run,
where and in what order is the scheduler's (harness.run.runner) and the executors' (harness.run.executors).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from harness.deploy.export import measure_deployment
from harness.errors import HarnessError, error_line
from harness.plugin.capabilities import CLASSES
from harness.plugin.method import CalibrationContext, CalibrationSet, GenerationContext, Generator
from harness.plugin.options import options_dict
from harness.plugin.registry import CALIBRATORS, GENERATORS, TASKS, TUNERS
from harness.plugin.task import ImagePrior, SynthesisTarget, Task
from harness.plugin.tuner import TuningContext
from harness.quant.convert import quantize_model
from harness.quant.modules import act_quantizers, in_place_evaluation, weight_quantized_layers
from harness.run.grid import Cell
from harness.run.labels import row_label
from harness.run.memory import reused_heap
from harness.run.peak_memory import PeakMemory
from harness.store.calibration_cache import CachedCalibration, load_calibration, write_calibration
from harness.store.code_version import describe_difference
from harness.store.io import config_hash, file_lock, write_json
from harness.store.keys import RECORD_SCHEMA, CellKeys
from harness.store.machine import simulation_kernels
from harness.store.provenance import harness_commit, library_versions, provenance
from harness.store.records import ResultStore, read_fp_metric

RESYNTHESIS_SEED_STRIDE = 1_000_003  # round r of a tuner's fresh images is seeded seed + r * stride (docs/methods.md, Fine-tuning)

Outcome = tuple[dict[str, Any], bool]  # a cell's record, and whether this call computed it


@dataclass(frozen=True)
class StaleEntry:
    """A finished record, cached calibration set or FP metric made by other code than the checkout's."""

    kind: str  # "record", "calibration set", "FP metric"
    path: Path
    what: str  # which cell or set, in words
    differences: tuple[str, ...]


class CellWorker:
    """Settles cells one at a time, sharing task instances, the FP model and cached calibration sets."""

    def __init__(self, out: Path, device: str = "cpu", force: bool = False, recompute_stale: bool = False) -> None:
        self.store = ResultStore(out)
        self.device = torch.device(device)
        self.force = force  # redo records, calibration sets and FP metrics older than this run
        self.recompute_stale = recompute_stale  # redo those made by other code than the checkout's
        self.stale: dict[Path, StaleEntry] = {}
        self._tasks: dict[tuple, Task] = {}
        self._keys: dict[int, tuple[Cell, CellKeys]] = {}
        self._fp_model: tuple[tuple, nn.Module] | None = None
        self._commit = harness_commit()
        self._started = time.time()
        self._holder = f"{socket.gethostname()} pid {os.getpid()}"

    def settle(self, cell: Cell, blocking: bool = True) -> Outcome | None:
        """Reuse the cell's finished record or compute it under its lock; None if held elsewhere."""
        cell_id = self.keys(cell).cell_id
        if (existing := self.reusable(cell)) is not None:
            return existing, False
        with file_lock(self.store.lock_path(cell_id), blocking=blocking, holder=self._holder,
                       on_wait=_announce_wait(f"cell {cell_id} ({cell.method} {cell.model} {cell.bits} seed {cell.seed})")) as acquired:
            if not acquired:
                return None
            if (existing := self.reusable(cell)) is not None:  # finished while we were not looking
                return existing, False
            record = self.run_cell(cell)
            self.store.write(record)
        return record, True

    def check_record(self, cell: Cell, record: dict[str, Any]) -> None:
        """Name a finished record as stale if other code than the checkout's made it (also one another process computed)."""
        path = self.store.path(record["cell_id"])
        if record.get("status") == "ok" and path not in self.stale:
            self._current(path, "record", _what(cell, record), record.get("code"), self.keys(cell).code)

    def record_failure(self, cell: Cell, message: str) -> Outcome:
        """An error record for a cell whose worker died (out of memory, killed, lost node)."""
        cell_id = self.keys(cell).cell_id
        with file_lock(self.store.lock_path(cell_id), holder=self._holder, on_wait=_announce_wait(f"cell {cell_id}")):
            if (existing := self.reusable(cell)) is not None:
                return existing, False
            record = {**self._base_record(cell), "status": "error", "error": message}
            self.store.write(record)
        return record, True

    def reusable(self, cell: Cell) -> dict[str, Any] | None:
        """A finished record, unless --force asks to redo records older than this run (or it is stale)."""
        keys = self.keys(cell)
        path, record = self.store.path(keys.cell_id), self.store.finished(keys.cell_id)
        if record is None or self._forced(path) or (cell.deploy and "deployment" not in record):
            return None
        return record if self._current(path, "record", _what(cell, record), record.get("code"), keys.code) else None

    def _forced(self, path: Path) -> bool:
        """Whether --force asks to redo ``path`` (made before this run started)."""
        return self.force and path.stat().st_mtime < self._started

    def _current(self, path: Path, kind: str, what: str, stored: dict | None, current: dict) -> bool:
        """Whether an artefact may be reused: made by the checkout's code, or stale and not to be recomputed."""
        differences = describe_difference(stored, current)
        if not differences:
            return True
        if self.recompute_stale:
            return False
        self.stale[path] = StaleEntry(kind, path, what, tuple(differences))
        return True

    def task(self, cell: Cell) -> Task:
        key = (cell.task, config_hash(options_dict(cell.task_options)))
        if key not in self._tasks:
            self._tasks[key] = TASKS.get(cell.task)(cell.task_options)
        return self._tasks[key]

    def keys(self, cell: Cell) -> CellKeys:
        """The cell resolved once (config, code, its task's weights) and kept: its record, its cache entries and
        every key they are filed under read this one resolution (harness.store.keys)."""
        kept = self._keys.get(id(cell))
        if kept is None or kept[0] is not cell:
            kept = self._keys[id(cell)] = (cell, cell.keys(self.task(cell).weights_id(cell.model)))
        return kept[1]

    def _load_fp_model(self, cell: Cell) -> nn.Module:
        key = (cell.task, cell.model, self.keys(cell).weights_id)
        if self._fp_model is None or self._fp_model[0] != key:
            self._fp_model = None  # free the previous model before loading the next
            model = self.task(cell).load_model(cell.model).to(self.device).eval()
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            self._fp_model = (key, model)
        return self._fp_model[1]

    def _base_record(self, cell: Cell) -> dict[str, Any]:
        keys = self.keys(cell)
        return {
            "schema": RECORD_SCHEMA, "cell_id": keys.cell_id, "weights_id": keys.weights_id, **copy.deepcopy(keys.config),
            "label": str(row_label(cell)), "code": keys.code, "harness_commit": self._commit, "versions": library_versions(),
            **provenance(),
        }

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        record = self._base_record(cell)
        timing: dict[str, float] = {}
        memory = PeakMemory()
        try:
            with memory, reused_heap():
                record.update(self._execute(cell, timing))
            record["status"] = "ok"
        except Exception as error:  # one bad cell must not stop the grid: it becomes an error record
            record["status"] = "error"
            record["error"] = error_line(error)
            record["traceback"] = traceback.format_exc()
        record["timing_s"] = {k: round(v, 4) for k, v in timing.items()}
        record["memory"] = memory.summary()
        record["kernels"] = simulation_kernels(self.device)
        return record

    def _execute(self, cell: Cell, timing: dict[str, float]) -> dict[str, Any]:
        task, keys = self.task(cell), self.keys(cell)
        fp_model = self._load_fp_model(cell)
        fp_metrics = self._fp_metrics(cell, task, fp_model)
        if cell.bits.is_fp:
            return {"metrics": fp_metrics, "fp_metrics": fp_metrics, "num_calibration_images": 0}
        calibration, cache_hit, generator_code = self._calibration_set(cell, task, fp_model, timing)
        start = time.perf_counter()
        qmodel, calibrator_info = self._calibrate(cell, task, fp_model, calibration)
        timing["calibrate"] = time.perf_counter() - start
        tuned = {}
        if cell.tuner is not None:
            start = time.perf_counter()
            tuned["tuner_info"] = self._tune(cell, task, fp_model, qmodel, calibration) or {}
            timing["tune"] = time.perf_counter() - start
        start = time.perf_counter()
        with in_place_evaluation():
            metrics = task.evaluate(qmodel, cell.model, limit=cell.limit)
        timing["evaluate"] = time.perf_counter() - start
        deployment = {}
        if cell.deploy:
            start = time.perf_counter()
            deployment["deployment"] = measure_deployment(task, cell.model, qmodel, fp_model, metrics, cell.limit)
            timing["deploy"] = time.perf_counter() - start
        return {**deployment, **tuned,
            "metrics": metrics, "fp_metrics": fp_metrics, "code": {**keys.code, "generator": generator_code},
            "num_calibration_images": int(calibration.images.shape[0]),
            "calibration_data": "real" if GENERATORS.get(cell.generator).uses_real_data else "data-free",
            "generator_cache_hit": cache_hit, "calibration_info": calibration.info,
            "calibrator_info": calibrator_info or {},
            "quantizer": {
                **keys.config["options"]["quant"],
                "scope": task.quantization_scope(),
                "activation_quantizers": len(act_quantizers(qmodel)),
                "weight_quantized_layers": sum(1 for _, m in weight_quantized_layers(qmodel) if m.weight_bits),
            },
        }

    def _calibrate(self, cell: Cell, task: Task, fp_model: nn.Module,
                   calibration: CalibrationSet) -> tuple[nn.Module, dict[str, Any] | None]:
        """A quantized copy of the FP model, calibrated by the cell's calibrator; and what the calibrator reports."""
        qmodel = quantize_model(fp_model, cell.bits, cell.quant, part=task.quantized_part)
        calibrator = CALIBRATORS.get(cell.calibrator)(cell.calibrator_options)
        calibrator_info = calibrator.calibrate(task.quantized_part(qmodel), CalibrationContext(
            **self._stage_context(cell, task, fp_model, calibration)))
        _check_frozen(qmodel, f"calibrator {cell.calibrator!r}")
        return qmodel, calibrator_info

    def _tune(self, cell: Cell, task: Task, fp_model: nn.Module, qmodel: nn.Module,
              calibration: CalibrationSet) -> dict[str, Any] | None:
        """Fine-tune the calibrated ``qmodel`` in place with the cell's tuner (harness.plugin.tuner); what it reports."""
        tuner = TUNERS.get(cell.tuner)(cell.tuner_options)
        generator = GENERATORS.get(cell.generator)(cell.generator_options)

        def synthesize(quantized: nn.Module, round_index: int) -> CalibrationSet:
            """Fresh images from the cell's generator for round ``round_index`` (>= 1), never cached."""
            target = task.synthesis_target(cell.model, fp_model, CLASSES in generator.required())
            fresh = dataclasses.replace(cell, seed=cell.seed + round_index * RESYNTHESIS_SEED_STRIDE)
            return self._generate(fresh, generator, task, target, {}, quantized=quantized)

        info = tuner.tune(task.quantized_part(qmodel), TuningContext(
            **self._stage_context(cell, task, fp_model, calibration), synthesize=synthesize))
        _check_frozen(qmodel, f"tuner {cell.tuner!r}")
        return info

    def _stage_context(self, cell: Cell, task: Task, fp_model: nn.Module, calibration: CalibrationSet) -> dict[str, Any]:
        """What calibrator and tuner both see (harness.plugin.method.CalibrationContext)."""
        return dict(fp_model=task.quantized_part(fp_model), calibration=calibration, bits=cell.bits, seed=cell.seed,
                    device=self.device, backbone=task.part_backbone, prior=task.prior(cell.model),
                    output_objective=lambda temperature: task.output_objective(fp_model, temperature))

    def calibrated_model(self, cell: Cell) -> tuple[nn.Module, Task]:
        """The cell's calibrated quantized model, rebuilt as the grid computes it (the calibration set from
        the cache when the generator's sets are cached), and its task. For export (docs/deploy.md)."""
        task = self.task(cell)
        fp_model = self._load_fp_model(cell)
        calibration = self._calibration_set(cell, task, fp_model, {})[0]
        qmodel = self._calibrate(cell, task, fp_model, calibration)[0]
        if cell.tuner is not None:
            self._tune(cell, task, fp_model, qmodel, calibration)
        return qmodel, task

    def _fp_metrics(self, cell: Cell, task: Task, fp_model: nn.Module) -> dict[str, float]:
        """Computed once per (task, model, weights, task options, limit, task version), cached beside the records."""
        keys = self.keys(cell)
        task_code = {"task": keys.code["task"]}
        path = self.store.fp_metric_path(keys)
        with file_lock(path.with_suffix(".lock"), holder=self._holder, on_wait=_announce_wait(f"FP metric {path.name}")):
            cached, problem = read_fp_metric(path, task.metric_names)
            if problem is not None:  # rebuilt now, so the next run finds it usable
                print(f"warning: FP metric {path} is not usable ({problem}); recomputing it",
                      file=sys.stderr, flush=True)
            if (cached is not None and not self._forced(path)
                    and self._current(path, "FP metric", f"{cell.task} {cell.model}", cached.get("code"), task_code)):
                return cached["metrics"]
            metrics = task.evaluate(fp_model, cell.model, limit=cell.limit)
            write_json(path, {"cell_id": path.stem, "metrics": metrics, "code": task_code})
        return metrics

    def _calibration_set(self, cell: Cell, task: Task, fp_model: nn.Module,
                         timing: dict[str, float]) -> tuple[CalibrationSet, bool, dict[str, str]]:
        """Bit-independent generator outputs are cached on disk, keyed by (generator, options, weights, seed, versions).

        Returns the set, whether it came from the cache, and the generator code that made it.
        """
        generator = GENERATORS.get(cell.generator)(cell.generator_options)
        target = task.synthesis_target(cell.model, fp_model, CLASSES in generator.required())
        prior, keys = target.prior, self.keys(cell)
        code = {component: keys.code[component] for component in ("generator", "task")}
        if not generator.bit_independent:
            return self._generate(cell, generator, task, target, timing), False, code["generator"]
        path = self.store.calibration_path(cell.generator, keys.calibration_key(prior, target.class_source))
        with file_lock(path.with_suffix(".lock"), holder=self._holder,  # one worker generates a set
                       on_wait=_announce_wait(f"calibration set {path.name}")):
            entry = self._cached_calibration(path, prior)
            what = f"{cell.generator} {cell.model} seed {cell.seed}"
            if entry is not None and self._current(path, "calibration set", what, entry.meta.get("code"), code):
                timing["generate"] = entry.meta["generate_seconds"]
                return entry.calibration, True, entry.meta["code"]["generator"]
            calibration = self._generate(cell, generator, task, target, timing)
            write_calibration(path, calibration, {
                "generator": cell.generator, "model": cell.model, "seed": cell.seed, "task": cell.task,
                "options": keys.config["options"]["generator"], "prior": dataclasses.asdict(prior),
                "code": code, "generate_seconds": timing["generate"], "weights_id": keys.weights_id,
            })
        return calibration, False, code["generator"]

    def _cached_calibration(self, path: Path, prior: ImagePrior) -> CachedCalibration | None:
        """The usable cached set at ``path``, unless --force redoes it; an unusable one is named in one line
        and left to be regenerated and rewritten by the caller, so the next run finds it usable."""
        if not path.exists() or self._forced(path):
            return None
        entry, problem = load_calibration(path, prior)
        if problem is not None:
            print(f"warning: calibration set {path} is not usable ({problem}); regenerating it",
                  file=sys.stderr, flush=True)
        return entry

    def _generate(self, cell: Cell, generator: Generator, task: Task, target: SynthesisTarget,
                  timing: dict[str, float], quantized: nn.Module | None = None) -> CalibrationSet:
        model = target.load().to(self.device)
        torch.manual_seed(cell.seed)
        start = time.perf_counter()
        calibration = generator.generate(GenerationContext(
            task=task if generator.uses_real_data else None, model_name=cell.model, model=model, prior=target.prior,
            seed=cell.seed, device=self.device, quantized_model=quantized,
        ))
        timing["generate"] = time.perf_counter() - start
        if target.class_source is not None:  # the record says which classes the images were made for
            calibration.info["class_source"] = target.class_source
        if not torch.isfinite(calibration.images).all():
            raise HarnessError(f"generator {cell.generator!r} produced non-finite images")
        calibration.images = calibration.images.detach().cpu()
        return calibration


def _check_frozen(qmodel: nn.Module, stage: str) -> None:
    """Ranges are frozen after calibration and stay so (docs/quantizer.md): evaluation must not move them."""
    unfrozen = [name for name, q in act_quantizers(qmodel) if not q.frozen]
    if unfrozen:
        raise HarnessError(f"{stage} left {len(unfrozen)} quantizers unfrozen, e.g. {unfrozen[0]}")


def _announce_wait(what: str) -> Callable[[str], None]:
    """A runner about to wait on a lock says for what and for whom, instead of hanging silently."""
    def announce(holder: str) -> None:
        print(f"waiting for {what}: {holder} holds its lock", file=sys.stderr, flush=True)
    return announce


def _what(cell: Cell, record: dict[str, Any]) -> str:
    return f"{record.get('label', cell.method)} {cell.model} {cell.bits} seed {cell.seed}"
