"""``python -m harness new-method`` / ``new-tuner`` / ``new-task``: a working plugin folder from the templates in
``harness/entry/templates``.

By default the plugin goes where discovery looks (``methods/NAME``, ``tasks/NAME``) and its test
beside the others (``tests/methods/test_NAME.py``). With ``--dest DIR`` it is a top-level package
``DIR/NAME`` holding its own test: nothing discovers it there, so the test imports it (pytest puts
``DIR`` on ``sys.path``), and ``python -m harness`` sees it once it is installed with an entry point
(docs/plugins.md) or moved into ``methods/`` / ``tasks/``. Module files import each other
relatively, so the same folder works in both places.
"""
from __future__ import annotations

import importlib
import importlib.util
import keyword
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2

from harness.errors import HarnessError
from harness.plugin.registry import CALIBRATORS, GENERATORS, METHODS, MODELS, TASKS, TUNERS, Registry

TEMPLATES = Path(__file__).parent / "templates"
Parts = Literal["both", "generator", "calibrator"]
GeneratorTemplate = Literal["plain", "synthesis"]
# generator file and test: plain uniform pixels, or noise optimized by the shared loop (harness.priors.loop)
GENERATOR_TEMPLATES = {"plain": ("method_generator.py.j2", "method_test.py.j2"),
                       "synthesis": ("method_generator_synthesis.py.j2", "method_test_synthesis.py.j2")}
PluginKind = Literal["methods", "tasks"]
DEFAULT_GENERATOR, DEFAULT_CALIBRATOR = "real", "minmax"  # the partner of a half method


@dataclass(frozen=True)
class Scaffold:
    """The files written, and what to type next."""

    files: list[Path]
    next_steps: list[str]


def plugin_folder(kind: PluginKind) -> Path:
    """The ``methods`` / ``tasks`` package that discovery imports plugins from."""
    return Path(importlib.import_module(kind).__path__[0])


def new_method(name: str, dest: Path | None = None, parts: Parts = "both",
               template: GeneratorTemplate = "plain") -> Scaffold:
    """A method folder: a generator (from ``template``) and/or calibrator called ``name``, and the MethodSpec
    pairing them."""
    generator, calibrator = parts != "calibrator", parts != "generator"
    if template != "plain" and not generator:
        raise HarnessError(f"--template {template} writes a generator: not with --calibrator-only")
    _check_name(name, [METHODS, *([GENERATORS] if generator else []), *([CALIBRATORS] if calibrator else [])], dest)
    generator_template, test_template = GENERATOR_TEMPLATES[template]
    files = {"__init__.py": "method_init.py.j2"}
    files.update({"generator.py": generator_template} if generator else {})
    files.update({"calibrator.py": "method_calibrator.py.j2"} if calibrator else {})
    context = {"generator": generator, "calibrator": calibrator,
               "generator_name": name if generator else DEFAULT_GENERATOR,
               "calibrator_name": name if calibrator else DEFAULT_CALIBRATOR}
    written = _render("methods", name, dest, files, test_template, context)
    run = f"python -m harness run --methods {name} --models digits_vit_seed0 --bits w4a8 --limit 100"
    return Scaffold(written, _next_steps("methods", name, dest, run))


def new_tuner(name: str, dest: Path | None = None) -> Scaffold:
    """A tuner folder: step sizes trained to the FP model's outputs, runnable after any pair with ``--tune``."""
    _check_name(name, [TUNERS], dest)
    written = _render("methods", name, dest, {"__init__.py": "tuner_init.py.j2", "tuner.py": "tuner_tuner.py.j2"},
                      "tuner_test.py.j2", {})
    run = f"python -m harness run --methods noise --tune none,{name} --models digits_vit_seed0 --bits w4a4 --limit 100"
    return Scaffold(written, _next_steps("methods", name, dest, run))


def new_task(name: str, dest: Path | None = None) -> Scaffold:
    """A task folder: a tiny offline task over scikit-learn's bundled digits with a ViT trained and cached here."""
    _check_name(name, [TASKS], dest)
    if f"{name}_vit" in MODELS:
        raise HarnessError(f"model {name + '_vit'!r} is already registered; choose another task name")
    written = _render("tasks", name, dest, {"__init__.py": "task_init.py.j2", "task.py": "task_task.py.j2",
                                            "model.py": "task_model.py.j2"}, "task_test.py.j2", {})
    run = f"python -m harness run --methods real,noise --tasks {name} --bits w8a8,w4a4"
    return Scaffold(written, _next_steps("tasks", name, dest, run))


def _check_name(name: str, registries: list[Registry], dest: Path | None) -> None:
    if not (name.isidentifier() and name.islower()) or keyword.iskeyword(name):
        raise HarnessError(f"{name!r} is not a lowercase Python identifier (a-z, digits and _, not starting with a digit)")
    for registry in registries:
        if name in registry:
            raise HarnessError(f"{registry.kind} {name!r} is already registered; choose another name")
    if dest is not None and importlib.util.find_spec(name) is not None:
        raise HarnessError(f"{name!r} is already an importable module; a package {name!r} in --dest would shadow it")


def _render(kind: PluginKind, name: str, dest: Path | None, files: dict[str, str], test_template: str,
            context: dict[str, Any]) -> list[Path]:
    root = (plugin_folder(kind) if dest is None else Path(dest)) / name
    test = plugin_folder(kind).parent / "tests" / kind / f"test_{name}.py" if dest is None else root / f"test_{name}.py"
    for path in (root, test):
        if path.exists():
            raise HarnessError(f"{path} already exists; choose another name or --dest")
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                                     keep_trailing_newline=True)
    context = {**context, "name": name, "camel": "".join(part.capitalize() for part in name.split("_")),
               "package": f"{kind}.{name}" if dest is None else name}
    targets = {root / file: template for file, template in files.items()} | {test: test_template}
    for path, template in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(environment.get_template(template).render(context))
    return list(targets)


def _next_steps(kind: PluginKind, name: str, dest: Path | None, run: str) -> list[str]:
    if dest is None:
        return [f"test: python -m pytest tests/{kind}/test_{name}.py", f"run:  {run}"]
    return [f"test: python -m pytest {Path(dest) / name}",
            f"run:  not discovered outside {kind}/: install it with a dfq_harness.{kind} entry point "
            f"(docs/plugins.md) or move it into {kind}/, then {run}"]
