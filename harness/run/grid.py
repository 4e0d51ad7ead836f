"""A grid: the Cartesian product of methods x tasks x models x bits x seeds (x tuners), resolved into cells.

A cell's identity is the hash of its resolved config (harness/store/keys.py; docs/results.md, Cell identity);
settings that cannot change a result (data location, batch size, worker count) are kept out of it.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.plugin.options import build_options, options_dict
from harness.plugin.registry import CALIBRATORS, GENERATORS, METHODS, MODELS, TASKS, TUNERS, unknown_name_message
from harness.plugin.tuner import NO_TUNING
from harness.quant.bits import BitSpec, parse_bits
from harness.quant.convert import QuantConfig
from harness.store.code_version import describe_difference, plugin_code, quantizer_code
from harness.store.io import config_hash
from harness.store.keys import CellKeys

DEPLOY_RUNTIMES = ("onnxruntime",)  # --deploy: where a calibrated cell is also measured (docs/deploy.md)

OWN = "own"  # in --data / --calib: each method's own generator / calibrator, beside the others given

# The default grid (docs/miniature.md, The default grid), when neither --methods, --data nor --calib is given:
# the data-free methods beside noise and real images as their papers run them, and every one's images (PSAQ-ViT
# V2's before its fine-tuning) calibrated by the strongest real-data calibrator measured on the miniature.
DEFAULT_METHODS = ("noise", "real", "psaq", "psaq_v2", "spdfq")
DEFAULT_DATA = ("noise", "real", "psaq", "psaq_v2_init", "spdfq")
DEFAULT_CALIB = ("repq",)
DEFAULT_TASKS = ("digits",)
DEFAULT_BITS = ("w4a4", "w4a3")
DEFAULT_SEEDS = (0,)


@dataclass
class GridSpec:
    """Everything ``harness run`` was asked for, before resolution."""

    methods: tuple[str, ...] | None = None  # None: the default grid, or the pairs alone when data and calib cross
    tasks: tuple[str, ...] = DEFAULT_TASKS
    models: tuple[str, ...] = ()  # empty: every model of each task
    bits: tuple[str, ...] = DEFAULT_BITS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    data: tuple[str, ...] = ()  # generators in place of each method's own (--data); crossed with calib
    calib: tuple[str, ...] = ()  # calibrators in place of each method's own (--calib)
    tune: tuple[str, ...] = ()  # tuners in place of each method's own (--tune; "none": calibration only)
    generator_options: dict[str, Any] = field(default_factory=dict)
    calibrator_options: dict[str, Any] = field(default_factory=dict)
    tuner_options: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)
    quant: QuantConfig = field(default_factory=QuantConfig)
    limit: int | None = None
    deploy: str | None = None  # a runtime of DEPLOY_RUNTIMES: records gain a deployment block


@dataclass
class Cell:
    """One (method, task, model, bits, seed) run with every option resolved."""

    method: str
    generator: str
    calibrator: str
    task: str
    model: str
    bits: BitSpec
    seed: int
    generator_options: Any
    calibrator_options: Any
    task_options: Any
    quant: QuantConfig
    limit: int | None
    deploy: str | None = None  # a measurement added to the record, not part of the cell's identity
    tuner: str | None = None  # fine-tuning after calibration (harness.plugin.tuner); None: calibration only
    tuner_options: Any = None

    def config(self) -> dict[str, Any]:
        """The resolved config as stored in the record. A tuned cell adds ``tuner`` and its options; a
        calibration-only cell has neither key, so its identity is what it was before tuners existed."""
        config = {
            "method": self.method, "generator": self.generator, "calibrator": self.calibrator,
            "task": self.task, "model": self.model, "bits": str(self.bits), "seed": self.seed,
            "options": {
                "generator": options_dict(self.generator_options),
                "calibrator": options_dict(self.calibrator_options),
                "task": options_dict(self.task_options),
                "quant": dataclasses.asdict(self.quant),
                "limit": self.limit,
            },
        }
        if self.tuner is not None:
            config["tuner"] = self.tuner
            config["options"]["tuner"] = options_dict(self.tuner_options)
        return config

    def code(self) -> dict[str, dict[str, str]]:
        """Version and source digest of each component the result depends on (harness.store.code_version)."""
        return component_code(self.task, *(() if self.bits.is_fp else (self.generator, self.calibrator, self.tuner)))

    def keys(self, weights_id: str) -> CellKeys:
        """The cell resolved once against the checkout's code and its task's weights: every store key comes from it."""
        return CellKeys(self.config(), self.code(), weights_id)


def cell_from_record(record: dict[str, Any]) -> Cell:
    """The cell a record was computed for, options rebuilt from their stored values (docs/results.md)."""
    options = record.get("options") or {}
    generator, calibrator, tuner = record["generator"], record["calibrator"], record.get("tuner")
    cell = Cell(
        record["method"], generator, calibrator, record["task"], record["model"], parse_bits(record["bits"]),
        record["seed"],
        build_options(GENERATORS.get(generator).Options, options.get("generator") or {},
                      generator, f"generator {generator!r}"),
        build_options(CALIBRATORS.get(calibrator).Options, options.get("calibrator") or {},
                      calibrator, f"calibrator {calibrator!r}"),
        build_options(TASKS.get(record["task"]).Options, options.get("task") or {}, record["task"],
                      f"task {record['task']!r}"),
        QuantConfig(**options.get("quant") or {}), options.get("limit"),
    )
    if tuner is not None:
        cell.tuner = tuner
        cell.tuner_options = build_options(TUNERS.get(tuner).Options, options.get("tuner") or {}, tuner, f"tuner {tuner!r}")
    return cell


def component_code(task: str, generator: str | None = None, calibrator: str | None = None,
                   tuner: str | None = None) -> dict[str, dict[str, str]]:
    """The checkout's code of a result's components; a quantized result adds generator, calibrator, quantizer
    and, when fine-tuned, the tuner."""
    code = {"task": plugin_code(TASKS.get(task)).as_dict()}
    if generator is not None:
        code.update(generator=plugin_code(GENERATORS.get(generator)).as_dict(),
                    calibrator=plugin_code(CALIBRATORS.get(calibrator)).as_dict(),
                    quantizer=quantizer_code().as_dict())
    if tuner is not None:
        code["tuner"] = plugin_code(TUNERS.get(tuner)).as_dict()
    return code


def code_differences(record: dict[str, Any]) -> list[str]:
    """How the code that made ``record`` differs from the checkout's (empty: the same code)."""
    quantized = record.get("bits") != "fp"
    try:
        current = component_code(record["task"], *((record["generator"], record["calibrator"], record.get("tuner"))
                                                   if quantized else ()))
    except (HarnessError, KeyError) as error:
        return [f"a component is no longer available ({error})"]
    return describe_difference(record.get("code"), current)


def expand(spec: GridSpec) -> list[Cell]:
    """Validate every name up front (so a typo fails before any work) and list the cells."""
    if spec.methods == () or not spec.tasks or not spec.bits or not spec.seeds:
        raise HarnessError("empty grid: give at least one method, task, bit spec and seed")
    if spec.methods is None and not spec.data and not spec.calib:
        grids = [dataclasses.replace(spec, methods=DEFAULT_METHODS),
                 dataclasses.replace(spec, data=DEFAULT_DATA, calib=DEFAULT_CALIB)]
    else:
        grids = [spec]
    # a cell of two grids is one cell (the default grid's two parts share none today; FP cells would)
    cells = list({config_hash(cell.config()): cell for grid in grids for cell in _cells(grid)}.values())
    _check_scopes(spec, cells)
    return sorted(cells, key=_cell_order)


def _cells(spec: GridSpec) -> list[Cell]:
    """The cells of one grid: methods (or generator x calibrator pairs) x tasks x bits x seeds x tuners."""
    bits = list(dict.fromkeys(parse_bits(text) for text in spec.bits))
    models_by_task = _models_by_task(spec)
    data, calib = list(dict.fromkeys(spec.data)), list(dict.fromkeys(spec.calib))
    crossing = spec.methods is None and bool(data) and bool(calib)
    if crossing and OWN in data + calib:
        raise HarnessError(f"--data/--calib {OWN}: a method's own plugin needs --methods (a bare generator x "
                           f"calibrator crossing has no method to take it from)")
    methods = [None] if crossing else spec.methods or DEFAULT_METHODS  # --data or --calib alone: the default methods
    cells = []
    # a name or seed given twice is one cell, counted once
    axes = [list(dict.fromkeys(axis)) for axis in (methods, spec.tasks, bits, spec.seeds)]
    for method_name, task_name, bit_spec, seed in itertools.product(*axes):
        method = METHODS.get(method_name) if method_name is not None else None
        pairs = list(dict.fromkeys(itertools.product(_own(data, method.generator if method else None),
                                                     _own(calib, method.calibrator if method else None))))
        if bit_spec.is_fp:  # an FP cell depends on no pair: one per method, not one per pair
            pairs = pairs[:1]
        tuners = [None] if bit_spec.is_fp else _tuners(spec, method)
        for (generator_name, calibrator_name), tuner_name in itertools.product(pairs, tuners):
            name = method_name or pair_method(generator_name, calibrator_name)
            cells += _pair_cells(spec, name, generator_name, calibrator_name, task_name, bit_spec, seed,
                                 models_by_task[task_name], tuner_name)
    return cells


def _cell_order(cell: Cell) -> tuple:
    """Cells sharing a generator's images run one after another (the set is made once, then reused)."""
    return cell.task, cell.model, cell.seed, cell.generator, cell.method, str(cell.bits)


def _own(names: list[str], own: str | None) -> list[str]:
    """``names`` with :data:`OWN` standing for the method's own plugin; no names: the method's own alone."""
    return [own if name == OWN else name for name in names] if names else [own]


def _tuners(spec: GridSpec, method: Any) -> list[str | None]:
    """The tuners a method's cells run with: ``--tune`` (``none`` is calibration only), else the method's own."""
    names = list(dict.fromkeys(spec.tune)) or [method.tuner if method is not None else None]
    for name in names:
        if name not in (None, NO_TUNING):
            TUNERS.get(name)  # an unknown name fails here, with suggestions
    return [None if name in (None, NO_TUNING) else name for name in names]


def pair_method(generator: str, calibrator: str) -> str:
    """The name of a crossed (generator, calibrator) pair: the registered method made of exactly that
    pair where there is one (so ``--data psaq --calib minmax`` is ``psaq``), else ``generator+calibrator``."""
    GENERATORS.get(generator), CALIBRATORS.get(calibrator)  # unknown names fail here, with suggestions
    own = [name for name, method in METHODS.items() if (method.generator, method.calibrator) == (generator, calibrator)]
    return own[0] if own else f"{generator}+{calibrator}"


def _pair_cells(spec: GridSpec, method: str, generator: str, calibrator: str, task: str, bits: BitSpec, seed: int,
                models: list[str], tuner: str | None = None) -> list[Cell]:
    """The cells of one method run with one (generator, calibrator) pair, one per model of the task."""
    generator_cls, calibrator_cls = GENERATORS.get(generator), CALIBRATORS.get(calibrator)
    if bits.mixed_precision and not calibrator_cls.supports_mixed_precision:
        mixed = [name for name, c in CALIBRATORS.items() if c.supports_mixed_precision]
        raise HarnessError(f"bit spec {bits} needs a mixed-precision calibrator (--calib "
                           f"{' or '.join(mixed) or 'none registered'}); {calibrator!r} is not one")
    generator_options = build_options(generator_cls.Options, spec.generator_options, generator, f"generator {generator!r}")
    calibrator_options = build_options(calibrator_cls.Options, spec.calibrator_options, calibrator,
                                       f"calibrator {calibrator!r}")
    if not bits.is_fp and (why := calibrator_cls(calibrator_options).unmet_bits(bits)) is not None:
        raise HarnessError(f"calibrator {calibrator!r} at {bits}: {why}")
    task_options = build_options(TASKS.get(task).Options, spec.task_options, task, f"task {task!r}")
    tuner_options = (build_options(TUNERS.get(tuner).Options, spec.tuner_options, tuner, f"tuner {tuner!r}")
                     if tuner is not None else None)
    return [Cell(method, generator, calibrator, task, model, bits, seed, generator_options, calibrator_options,
                 task_options, spec.quant, spec.limit, None if bits.is_fp else spec.deploy, tuner, tuner_options)
            for model in models]


def _check_scopes(spec: GridSpec, cells: list[Cell]) -> None:
    """``PLUGIN.key=value`` must name a plugin of the grid: a misspelt scope would be silently ignored."""
    if spec.tuner_options and not any(cell.tuner for cell in cells):
        raise HarnessError(f"--tune-opt {next(iter(spec.tuner_options))}: no cell of this grid is fine-tuned "
                           f"(give --tune with one of: {', '.join(TUNERS.names()) or 'none registered'})")
    for flag, kind, registry, options, in_grid in (
            ("--gen-opt", "generator", GENERATORS, spec.generator_options, {c.generator for c in cells}),
            ("--calib-opt", "calibrator", CALIBRATORS, spec.calibrator_options, {c.calibrator for c in cells}),
            ("--tune-opt", "tuner", TUNERS, spec.tuner_options, {c.tuner for c in cells if c.tuner}),
            ("--task-opt", "task", TASKS, spec.task_options, {c.task for c in cells})):
        for key in options:
            scope = key.partition(".")[0] if "." in key else None
            if scope is None or scope in in_grid:
                continue
            here = f"{kind}s in this grid: {', '.join(sorted(in_grid))}"
            if scope in registry:
                raise HarnessError(f"{flag} {key}: {kind} {scope!r} is not in this grid ({here})")
            raise HarnessError(f"{flag} {key}: {unknown_name_message(kind, scope, registry.names())} ({here})")
def _models_by_task(spec: GridSpec) -> dict[str, list[str]]:
    for task in spec.tasks:
        TASKS.get(task)
    for model in spec.models:
        entry = MODELS.get(model)
        if entry.task not in spec.tasks:
            raise HarnessError(f"model {model!r} belongs to task {entry.task!r}, which is not in --tasks")
    chosen = {task: [m for m in dict.fromkeys(spec.models) if MODELS.get(m).task == task] for task in spec.tasks}
    return {task: models or list(TASKS.get(task).model_names) for task, models in chosen.items()}
