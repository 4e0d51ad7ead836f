"""Conformance kit: the plugin contract (docs/plugins.md) as executable rules, for any registered plugin.

Every check raises :class:`ConformanceError`, an ``AssertionError`` whose message starts with the
broken rule in brackets (``[generator-determinism] generator 'x': ...``). Generators, calibrators
and methods run on the reference host, the offline ``digits`` task and its ``digits_vit_seed0``
model, so the kit needs no data and no network. A plugin tunes the kit with class attributes:

- ``smoke_options: ClassVar[dict]`` (generator, calibrator): options that make it fast enough for
  the kit, e.g. ``{"num_images": 4, "iterations": 2}``; without it the kit uses
  ``{"num_images": 4}`` where the options have that field, else the defaults.
- ``in_pixel_range: ClassVar[bool] = False`` (generator): its images may leave
  ``ImagePrior.clamp_bounds()``, as the ``noise`` baseline (N(0, 1) in normalized space) does.
- ``conformance_setup(cls, workdir: Path) -> TaskSetup`` classmethod (task): a small offline instance,
  for tasks that read external data; a task without one whose defaults need data is skipped.

:class:`Hooks` supplies the same for plugins that do not declare them yet (a test suite's stand-ins);
a plugin's own declaration wins. ``cases()`` and ``run_case()`` are the pytest helpers.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from harness.errors import HarnessError
from harness.plugin.method import CalibrationContext, CalibrationSet, GenerationContext, Generator, MethodSpec
from harness.plugin.options import build_options, options_dict
from harness.plugin.registry import CALIBRATORS, GENERATORS, METHODS, MODELS, TASKS, TUNERS, Registry
from harness.plugin.task import METRIC_RANGE, ImagePrior, Task, TaskOptions
from harness.plugin.task_setup import SETUP_LIMIT, ConformanceSkip, TaskSetup
from harness.plugin.tuner import TuningContext
from harness.quant.bits import parse_bits
from harness.quant.calibrate import observe_and_freeze
from harness.quant.convert import QuantConfig, quantize_model
from harness.quant.modules import act_quantizers
from harness.quant.observers import MinMaxObserver
from harness.run.grid import GridSpec
from harness.run.runner import GridRunner

HOST_TASK, HOST_MODEL, HOST_BITS, HOST_LIMIT = "digits", "digits_vit_seed0", "w4a8", SETUP_LIMIT
DEFAULT_SMOKE_OPTIONS = {"num_images": 4}
CALIBRATION_IMAGES = 8
SMALL_BATCH = 3  # evaluation batch size compared with the task's default
CLAMP_TOLERANCE = 1e-5
CPU = torch.device("cpu")


class ConformanceError(AssertionError):
    """A plugin broke a rule of the contract; ``rule`` names it, and so does the message."""

    def __init__(self, rule: str, plugin: str, detail: str) -> None:
        super().__init__(f"[{rule}] {plugin}: {detail}")
        self.rule = rule


@dataclass(frozen=True)
class Hooks:
    """Stand-ins for plugins that do not declare ``smoke_options`` / ``conformance_setup`` themselves."""

    smoke_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by generator/calibrator name
    task_setups: Mapping[str, Callable[[Path], TaskSetup]] = field(default_factory=dict)  # by task name


def _one_thread(check: Callable[..., None]) -> Callable[..., None]:
    """The kit's models are tiny: more intra-op threads only add synchronisation, which stalls a shared machine."""
    @functools.wraps(check)
    def single_threaded(*args: Any, **kwargs: Any) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            check(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return single_threaded


def _require(ok: Any, rule: str, plugin: str, detail: str) -> None:
    if not ok:
        raise ConformanceError(rule, plugin, detail)


def _require_json(value: Any, rule: str, plugin: str, what: str) -> None:
    """Records are written with ``json.dump(sort_keys=True)``: what goes into one must survive it."""
    try:
        json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ConformanceError(rule, plugin, f"{what} goes into the record but is not JSON ({error})") from None


def check_options(options_class: type, plugin: str) -> None:
    """Each field has a default; the record's dict comes back through JSON as an equal instance."""
    _require(dataclasses.is_dataclass(options_class), "options-dataclass", plugin,
             f"Options {options_class.__name__} is not a dataclass")
    missing = [f.name for f in dataclasses.fields(options_class)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    _require(not missing, "options-defaults", plugin, f"option fields without a default: {', '.join(missing)}")
    _check_round_trip(options_class(), plugin)
    try:
        build_options(options_class, {"no_such_option": 1}, "", plugin)
    except HarnessError:
        return
    raise ConformanceError("errors-unknown-option", plugin, "an unknown option did not raise HarnessError")


def _check_round_trip(options: Any, plugin: str) -> None:
    _require_json(options_dict(options), "options-round-trip", plugin, "the options dict")
    stored = json.loads(json.dumps(options_dict(options)))
    try:
        again = type(options)(**stored)
    except Exception as error:
        raise ConformanceError("options-round-trip", plugin, f"Options(**record) failed: {error}") from None
    _require(again == options, "options-round-trip", plugin, f"{options!r} came back from the record as {again!r}")


def smoke_options(plugin_class: type, name: str, hooks: Hooks = Hooks()) -> dict[str, Any]:
    """The plugin's own ``smoke_options``, else the hook's, else ``num_images=4`` where that field exists."""
    declared = getattr(plugin_class, "smoke_options", None)
    if declared is None:
        declared = hooks.smoke_options.get(name)
    if declared is None:
        fields = {f.name for f in dataclasses.fields(plugin_class.Options)}
        declared = {key: value for key, value in DEFAULT_SMOKE_OPTIONS.items() if key in fields}
    return dict(declared)


def _smoke_instance(plugin_class: type, name: str, plugin: str, hooks: Hooks) -> Any:
    try:
        options = build_options(plugin_class.Options, smoke_options(plugin_class, name, hooks), name, plugin)
    except HarnessError as error:
        raise ConformanceError("smoke-options", plugin, str(error)) from None
    _check_round_trip(options, plugin)
    return options


def _host() -> tuple[Task, nn.Module]:
    """A fresh digits task and FP model, frozen as the runner freezes it (a broken plugin may mutate it)."""
    task = TASKS.get(HOST_TASK)()
    model = task.load_model(HOST_MODEL).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return task, model


@dataclass
class _Snapshot:
    """What "untouched" means for the FP model: its state dict, and each module's class and hooks."""

    state: dict[str, torch.Tensor]
    modules: list[tuple[str, str]]

    @classmethod
    def of(cls, model: nn.Module) -> "_Snapshot":
        return cls({key: value.detach().clone() for key, value in model.state_dict().items()},
                   [(name or "model", f"{type(m).__qualname__} with {len(m._forward_hooks)} forward hooks, "
                                      f"{len(m._forward_pre_hooks)} pre-hooks") for name, m in model.named_modules()])

    def difference(self, model: nn.Module) -> str:
        """Empty when ``model`` matches the snapshot, else the first difference in words."""
        now = _Snapshot.of(model)
        if now.modules != self.modules:
            name, was, is_now = next(((a[0], a[1], b[1]) for a, b in zip(self.modules, now.modules) if a != b),
                                     ("model", f"{len(self.modules)} modules", f"{len(now.modules)}"))
            return f"module {name} changed: {was} -> {is_now}"
        changed = sorted(key for key in self.state.keys() | now.state.keys() if key not in self.state
                         or key not in now.state or not torch.equal(self.state[key], now.state[key]))
        return f"state dict changed: {', '.join(changed[:3])}" if changed else ""


def _smoke_plugin(registry: Registry, kind: str, name: str, hooks: Hooks) -> tuple[Any, str]:
    """The registered plugin, its options checked, built with its smoke options; and its name for messages."""
    plugin_class, plugin = registry.get(name), f"{kind} {name!r}"
    check_options(plugin_class.Options, plugin)
    return plugin_class(_smoke_instance(plugin_class, name, plugin, hooks)), plugin


@_one_thread
def check_generator(name: str, hooks: Hooks = Hooks()) -> None:
    """Shape, finiteness, clamp range, JSON info, FP model untouched, same seed same images, other seed not."""
    generator, plugin = _smoke_plugin(GENERATORS, "generator", name, hooks)
    task, model = _host()
    prior = task.prior(HOST_MODEL)
    before = _Snapshot.of(model)
    first = _generate(generator, task, model, prior, 0, plugin)
    difference = before.difference(model)
    _require(not difference, "generator-fp-untouched", plugin, difference)
    _check_calibration_set(first, generator, prior, plugin)
    again = _generate(generator, task, model, prior, 0, plugin)
    same_labels = (first.labels is None) == (again.labels is None) and (
        first.labels is None or torch.equal(first.labels, again.labels))
    _require(torch.equal(first.images, again.images) and same_labels, "generator-determinism", plugin,
             "two runs with seed 0 gave different images or labels")
    other = _generate(generator, task, model, prior, 1, plugin)
    _require(not torch.equal(first.images, other.images), "generator-seed", plugin, "seeds 0 and 1 gave identical images")


def _generate(generator: Generator, task: Task, model: nn.Module, prior: ImagePrior, seed: int,
              plugin: str) -> CalibrationSet:
    """As the runner calls it: the global RNG seeded first."""
    torch.manual_seed(seed)
    result = generator.generate(GenerationContext(task=task if generator.uses_real_data else None, model_name=HOST_MODEL, model=model, prior=prior,
                                                  seed=seed, device=CPU))
    _require(isinstance(result, CalibrationSet) and isinstance(result.images, torch.Tensor), "generator-returns",
             plugin, f"generate() returned {type(result).__name__}, not a CalibrationSet of image tensors")
    return result


def _check_calibration_set(calibration: CalibrationSet, generator: Generator, prior: ImagePrior, plugin: str) -> None:
    images = calibration.images
    count = getattr(generator.options, "num_images", len(images))
    _require(images.dim() == 4 and tuple(images.shape) == (count, *prior.input_size) and images.is_floating_point(),
             "generator-shape", plugin, f"images {tuple(images.shape)} {images.dtype}; expected float "
             f"({count}, {', '.join(map(str, prior.input_size))}) from num_images and the task's prior")
    if calibration.labels is not None:
        _require(tuple(calibration.labels.shape) == (count,), "generator-shape", plugin,
                 f"labels {tuple(calibration.labels.shape)}, expected ({count},)")
    _require(torch.isfinite(images).all(), "generator-finite", plugin,
             f"{int((~torch.isfinite(images)).sum())} non-finite values in the images")
    if getattr(type(generator), "in_pixel_range", True):
        low, high = prior.clamp_bounds()
        outside = int(((images < low - CLAMP_TOLERANCE) | (images > high + CLAMP_TOLERANCE)).sum())
        _require(not outside, "generator-clamp", plugin, f"{outside} values outside ImagePrior.clamp_bounds() "
                 "(pixels in [0, 1]); clamp them, or declare in_pixel_range = False")
    _require_json(calibration.info, "generator-info-json", plugin, "CalibrationSet.info")


@_one_thread
def check_calibrator(name: str, hooks: Hooks = Hooks()) -> None:
    """FP model untouched, every activation quantizer frozen, finite outputs, JSON info."""
    calibrator, plugin = _smoke_plugin(CALIBRATORS, "calibrator", name, hooks)
    task, model = _host()
    bits = parse_bits(HOST_BITS)
    qmodel = quantize_model(model, bits, QuantConfig())
    images = task.calibration_images(HOST_MODEL, CALIBRATION_IMAGES, 0)
    before = _Snapshot.of(model)
    info = calibrator.calibrate(qmodel, CalibrationContext(fp_model=model, calibration=CalibrationSet(images),
                                                           bits=bits, seed=0, device=CPU,
                                                           prior=task.prior(HOST_MODEL)))
    difference = before.difference(model)
    _require(not difference, "calibrator-fp-untouched", plugin, difference)
    quantizers = act_quantizers(qmodel)
    unfrozen = [name for name, quantizer in quantizers if not quantizer.frozen]
    if unfrozen:
        raise ConformanceError("calibrator-freezes", plugin, f"{len(unfrozen)} of {len(quantizers)} activation "
                               f"quantizers left unfrozen, e.g. {unfrozen[0]}")
    _require(info is None or isinstance(info, dict), "calibrator-info-json", plugin,
             f"calibrate() returned {type(info).__name__}; the record wants a dict or None")
    _require_json(info, "calibrator-info-json", plugin, "calibrate()'s return value")
    with torch.no_grad():
        outputs = qmodel(images)
    _require(torch.isfinite(outputs).all(), "calibrator-finite", plugin, "the calibrated model's outputs are not finite")


@_one_thread
def check_tuner(name: str, hooks: Hooks = Hooks()) -> None:
    """FP model untouched, quantizers still frozen, nothing left trainable, the model changed, finite outputs,
    JSON info, same seed same tuned model."""
    tuner, plugin = _smoke_plugin(TUNERS, "tuner", name, hooks)
    task, model = _host()
    bits = parse_bits(HOST_BITS)
    images = task.calibration_images(HOST_MODEL, CALIBRATION_IMAGES, 0)
    before = _Snapshot.of(model)
    tuned = []
    for _ in range(2):
        qmodel = quantize_model(model, bits, QuantConfig())
        context = TuningContext(fp_model=model, calibration=CalibrationSet(images), bits=bits, seed=0, device=CPU,
                                prior=task.prior(HOST_MODEL))
        observe_and_freeze(qmodel, images, lambda _: MinMaxObserver(), CPU)
        calibrated = _Snapshot.of(qmodel)
        torch.manual_seed(0)
        info = tuner.tune(qmodel, context)
        tuned.append(qmodel)
    difference = before.difference(model)
    _require(not difference, "tuner-fp-untouched", plugin, difference)
    unfrozen = [name for name, quantizer in act_quantizers(qmodel) if not quantizer.frozen]
    _require(not unfrozen, "tuner-keeps-frozen", plugin, f"{len(unfrozen)} activation quantizers unfrozen, e.g. "
             f"{unfrozen[0] if unfrozen else ''}")
    trainable = [name for name, parameter in qmodel.named_parameters() if parameter.requires_grad]
    _require(not trainable, "tuner-finishes", plugin, f"{len(trainable)} parameters left trainable (e.g. "
             f"{trainable[0] if trainable else ''}); a tuned model is evaluated as a calibrated one")
    _require(calibrated.difference(qmodel), "tuner-trains", plugin, "the tuned model equals the calibrated one")
    _require(info is None or isinstance(info, dict), "tuner-info-json", plugin,
             f"tune() returned {type(info).__name__}; the record wants a dict or None")
    _require_json(info, "tuner-info-json", plugin, "tune()'s return value")
    _require(not _Snapshot.of(tuned[0]).difference(tuned[1]), "tuner-determinism", plugin,
             "two runs with seed 0 gave different tuned models")
    with torch.no_grad():
        outputs = qmodel(images)
    _require(torch.isfinite(outputs).all(), "tuner-finite", plugin, "the tuned model's outputs are not finite")


@_one_thread
def check_task(name: str, hooks: Hooks = Hooks()) -> None:
    """Registered models, HarnessError for unknown models, prior, metrics, batch-size invariance, a grid cell."""
    task_class, plugin = TASKS.get(name), f"task {name!r}"
    check_options(task_class.Options, plugin)
    _require(issubclass(task_class.Options, TaskOptions), "task-options", plugin,
             f"Options {task_class.Options.__name__} must extend TaskOptions (data_root, checkpoint, batch_size)")
    _require(task_class.model_names and task_class.metric_names, "task-declares", plugin, "no model_names or metric_names")
    foreign = [model for model in task_class.model_names if model not in MODELS or MODELS.get(model).task != name]
    _require(not foreign, "task-models-registered", plugin, f"models not registered to it: {', '.join(foreign)}")
    setup_hook = getattr(task_class, "conformance_setup", None) or hooks.task_setups.get(name)
    with tempfile.TemporaryDirectory(prefix="dfq-conformance-") as workdir:
        setup = setup_hook(Path(workdir)) if setup_hook else TaskSetup()
        try:
            options = build_options(task_class.Options, dict(setup.options), name, plugin)
            task = task_class(options)
            _check_unknown_model(task, plugin)
            _check_task_instance(task, name, setup, Path(workdir) / "results", plugin, hooks)
        except HarnessError as error:
            if setup_hook:
                raise ConformanceError("task-setup", plugin, f"its small instance failed: {error}") from None
            raise ConformanceSkip(f"{plugin} needs data or weights the kit does not have ({error}); give it a "
                                  "conformance_setup(workdir) classmethod returning a TaskSetup") from None


def _check_unknown_model(task: Task, plugin: str) -> None:
    for call in (task.load_model, task.weights_id):
        try:
            call("no_such_model")
        except HarnessError:
            continue
        except Exception as error:
            raise ConformanceError("errors-unknown-model", plugin, f"{call.__name__}('no_such_model') raised "
                                   f"{type(error).__name__}, not HarnessError") from None
        raise ConformanceError("errors-unknown-model", plugin, f"{call.__name__}('no_such_model') did not raise")


def _check_task_instance(task: Task, name: str, setup: TaskSetup, results: Path, plugin: str, hooks: Hooks) -> None:
    model_name = setup.model_name or task.model_names[0]
    prior = task.prior(model_name)
    _require(isinstance(prior, ImagePrior) and len(prior.input_size) == 3
             and len(prior.mean) == len(prior.std) == prior.input_size[0], "task-prior", plugin,
             f"prior {prior!r} needs input_size (C, H, W) and C means and stds")
    weights_id = task.weights_id(model_name)
    _require(isinstance(weights_id, str) and weights_id and weights_id == task.weights_id(model_name),
             "task-weights-id", plugin, f"weights_id() must be a stable non-empty string, got {weights_id!r}")
    model = task.load_model(model_name)
    _require(isinstance(model, nn.Module) and not model.training, "task-model", plugin,
             "load_model() must return the FP model in eval mode")
    images = task.calibration_images(model_name, 2, 0)
    _require(tuple(images.shape) == (2, *prior.input_size), "task-calibration-images", plugin,
             f"calibration_images(2) has shape {tuple(images.shape)}, the prior says {prior.input_size}")
    _require(torch.equal(images, task.calibration_images(model_name, 2, 0)), "task-calibration-images", plugin,
             "calibration_images() differ for the same seed")
    metrics = task.evaluate(model, model_name, limit=setup.limit)
    low, high = METRIC_RANGE
    _require(set(metrics) == set(task.metric_names) and all(low <= float(v) <= high for v in metrics.values()),
             "task-metrics", plugin, f"evaluate() gave {metrics}; expected {task.metric_names} in percent")
    small = type(task)(dataclasses.replace(task.options, batch_size=SMALL_BATCH))
    small_metrics = small.evaluate(model, model_name, limit=setup.limit)
    _require(small_metrics == metrics, "task-batch-size-invariance", plugin,
             f"batch size {task.options.batch_size}: {metrics}, batch size {SMALL_BATCH}: {small_metrics}")
    _run_one_cell(GridSpec(methods=("real",), tasks=(name,), models=(model_name,), bits=(HOST_BITS,), seeds=(0,),
                           generator_options=_part_options(GENERATORS, "real", hooks),
                           task_options=dict(setup.options), limit=setup.limit), results, "task-runs", plugin)


@_one_thread
def check_method(name: str, hooks: Hooks = Hooks()) -> None:
    """Its parts are registered and a one-cell digits grid (smoke options) ends with an ``ok`` record."""
    method, plugin = METHODS.get(name), f"method {name!r}"
    _require(isinstance(method, MethodSpec), "method-spec", plugin,
             f"registered a {type(method).__name__}, not a MethodSpec")
    parts = [(method.generator, GENERATORS), (method.calibrator, CALIBRATORS)]
    if method.tuner is not None:
        parts.append((method.tuner, TUNERS))
    for part, registry in parts:
        _require(part in registry, "method-parts", plugin, f"{registry.kind} {part!r} is not registered")
    grid = GridSpec(methods=(name,), tasks=(HOST_TASK,), models=(HOST_MODEL,), bits=(HOST_BITS,), seeds=(0,),
                    generator_options=_part_options(GENERATORS, method.generator, hooks),
                    calibrator_options=_part_options(CALIBRATORS, method.calibrator, hooks), limit=HOST_LIMIT,
                    tuner_options=_part_options(TUNERS, method.tuner, hooks) if method.tuner else {})
    with tempfile.TemporaryDirectory(prefix="dfq-conformance-") as results:
        _run_one_cell(grid, Path(results), "method-runs", plugin)


def _part_options(registry: Registry, name: str, hooks: Hooks) -> dict[str, Any]:
    """A grid's options for one generator/calibrator: its smoke options as ``name.key``, reaching it only."""
    return {f"{name}.{key}": value for key, value in smoke_options(registry.get(name), name, hooks).items()}


def _run_one_cell(grid: GridSpec, results: Path, rule: str, plugin: str) -> None:
    record = GridRunner(results).run(grid).records[0]
    _require(record["status"] == "ok", rule, plugin, f"its one-cell grid failed: {record.get('error')}")


REGISTRIES: dict[str, Registry] = {"generator": GENERATORS, "calibrator": CALIBRATORS, "tuner": TUNERS, "task": TASKS,
                                   "method": METHODS}
CHECKS: dict[str, Callable[..., None]] = {"generator": check_generator, "calibrator": check_calibrator,
                                          "tuner": check_tuner, "task": check_task, "method": check_method}


def registered(names: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """``(kind, name)`` of every registered plugin, or of those called one of ``names``."""
    wanted = None if names is None else set(names)
    return [(kind, name) for kind, registry in REGISTRIES.items() for name in registry.names()
            if wanted is None or name in wanted]


def check(kind: str, name: str, hooks: Hooks = Hooks()) -> None:
    """Run the kit's rules for one plugin of ``kind`` (generator, calibrator, tuner, task, method)."""
    CHECKS[kind](name, hooks)


def cases(names: Iterable[str] | None = None, known_failures: Mapping[tuple[str, str], str] | None = None) -> list:
    """pytest parameters for ``@pytest.mark.parametrize("kind, name", cases())``, ids like ``generator:noise``.

    ``known_failures`` maps ``(kind, name)`` to a reason: a strict xfail, so a fixed plugin is noticed.
    """
    import pytest

    known_failures = known_failures or {}
    return [pytest.param(kind, name, id=f"{kind}:{name}", marks=[
        pytest.mark.xfail(reason=known_failures[(kind, name)], raises=ConformanceError, strict=True)
    ] if (kind, name) in known_failures else []) for kind, name in registered(names)]


def run_case(kind: str, name: str, hooks: Hooks = Hooks()) -> None:
    """:func:`check` for pytest: a plugin the kit cannot instantiate offline is skipped with the reason."""
    import pytest

    try:
        check(kind, name, hooks)
    except ConformanceSkip as reason:
        pytest.skip(str(reason))
