"""Grids as settings: the ``run`` flags, or the same keys in a versionable YAML or JSON file (``--grid``).

A grid file is read like every other file the harness reads (docs/results.md, Grid files are validated on
read): against a declared shape, :data:`GRID_FILE`, before the grid starts, and a bad one is one line
naming the file, the key and what is accepted. Only YAML's safe subset is read (no tags that build
objects), at most :data:`MAX_GRID_BYTES`, and every value is checked before any is used.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.plugin.options import parse_assignments
from harness.quant.convert import QuantConfig
from harness.run.grid import DEPLOY_RUNTIMES, GridSpec
from harness.store.schema import Shape, boolean, fields, finite_number, integer_within, list_of, nullable, one_of, shown, typed

LIST_KEYS = ("methods", "tasks", "models", "bits", "seeds", "data", "calib", "tune")
OPTION_KEYS = {"gen_opt": "generator", "calib_opt": "calibrator", "task_opt": "task", "tune_opt": "tuner"}
SCALAR_KEYS = ("data_root", "checkpoint", "batch_size", "profile", "attn_quantizer",
               "keep_first_last_fp", "limit", "deploy")
GRID_KEYS = (*LIST_KEYS, *OPTION_KEYS, *SCALAR_KEYS)
MAX_SEED = 2**32 - 1  # 32-bit seeds: what numpy and every other seeded library accept
MAX_GRID_BYTES = 1 << 20  # the largest grid shipped (grids/psaq_table.yaml) is under 1 KiB; a MiB is no grid
EXAMPLE = "e.g. 'methods: [real, noise]'"


def _names(singular: str) -> Shape:
    """A list of names, or one comma-separated string of them (as the flag takes them)."""
    name = typed(str, f"a {singular} name")

    def check(value: Any, where: str) -> str | None:
        if isinstance(value, str):
            return None
        if isinstance(value, list):
            return list_of(name)(value, where)
        return f"{where} is {shown(value)}, expected a list of {singular} names or a comma-separated string"
    return check


_SEED = integer_within(0, MAX_SEED)


def _seed_list(value: Any, where: str) -> str | None:
    """An integer, a list of them, or a comma-separated string of them, each a 32-bit seed."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
        return next((problem for index, part in enumerate(parts) if (problem := _SEED(
            int(part) if part.lstrip("-").isdigit() else part, f"{where}[{index}]"))), None)
    if isinstance(value, list):
        return list_of(_SEED)(value, where)
    if isinstance(value, int) and not isinstance(value, bool):
        return _SEED(value, where)
    return f"{where} is {shown(value)}, expected a list of integer seeds in [0, {MAX_SEED}]"


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, bool, type(None))) or finite_number(value, "") is None


def _option_value(value: Any, where: str) -> str | None:
    """What an option takes: a string, a finite number, true/false, null, or a flat list of those."""
    if _scalar(value) or (isinstance(value, list) and all(map(_scalar, value))):
        return None
    return f"{where} is {shown(value)}, expected a string, a finite number, true/false, null or a list of those"


def _options(what: str) -> Shape:
    """A mapping of option names to values, or a list of ``KEY=VALUE`` strings (as the flag takes them)."""
    def check(value: Any, where: str) -> str | None:
        if isinstance(value, list):
            return next((f"{where}[{index}] is {shown(item)}, expected KEY=VALUE" for index, item in enumerate(value)
                         if not isinstance(item, str) or not item.partition("=")[0].strip() or "=" not in item), None)
        if not isinstance(value, dict):
            return f"{where} is {shown(value)}, expected a mapping of {what} options or a list of KEY=VALUE"
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                return f"{where} has the key {shown(key)}, expected {what} option names"
            if (problem := _option_value(item, f"{where}.{key}")) is not None:
                return problem
        return None
    return check


GRID_FILE: dict[str, Shape] = {key: nullable(shape) for key, shape in {  # null: the flag's default
    "methods": _names("method"), "tasks": _names("task"), "models": _names("model"), "bits": _names("bit width"),
    "seeds": _seed_list, "data": _names("generator"), "calib": _names("calibrator"),
    "tune": _names("tuner"),
    **{key: _options(what) for key, what in OPTION_KEYS.items()},
    "data_root": typed(str, "a folder path"), "checkpoint": typed(str, "a file path"),
    "batch_size": integer_within(1), "profile": typed(str, "a profile name"),
    "attn_quantizer": typed(str, "a quantizer name"), "keep_first_last_fp": boolean, "limit": integer_within(1),
    "deploy": one_of(DEPLOY_RUNTIMES),
}.items()}


def load_grid_file(path: Path) -> dict[str, Any]:
    """Read a grid file; its keys are the long flags of ``run`` with ``_`` for ``-``. A file that is not a
    mapping of those keys to values of their declared shape (:data:`GRID_FILE`) is one HarnessError."""
    path = Path(path)
    settings = _parsed(path, _text(path))
    if settings is None:
        raise HarnessError(f"grid file {path} is empty; accepted: a mapping of run settings ({EXAMPLE})")
    if not isinstance(settings, dict):
        raise HarnessError(f"grid file {path} holds {shown(settings)}, not a mapping of run settings; "
                           f"accepted: keys {', '.join(GRID_KEYS)} ({EXAMPLE})")
    for key in settings:
        if key not in GRID_KEYS:
            close = difflib.get_close_matches(key, GRID_KEYS, n=1) if isinstance(key, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise HarnessError(f"grid file {path} has unknown key {shown(key)}{hint}; accepted: {', '.join(GRID_KEYS)}")
    if (problem := fields(GRID_FILE)(settings, "")) is not None:
        raise HarnessError(f"grid file {path}: {problem}")
    return settings


def _text(path: Path) -> str:
    """The file's text, read whole only when it is small enough to be a grid (``/dev/zero`` is not)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_GRID_BYTES + 1)
    except OSError as error:
        raise HarnessError(f"grid file {path} is unreadable: {error.strerror or error}; "
                           "accepted: a readable YAML or JSON file") from None
    if len(data) > MAX_GRID_BYTES:
        raise HarnessError(f"grid file {path} is larger than {MAX_GRID_BYTES >> 20} MiB; accepted: a YAML or JSON "
                           "file of run settings (a few lines)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HarnessError(f"grid file {path} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                           f"{error.start}); accepted: a YAML or JSON text file") from None


def _parsed(path: Path, content: str) -> Any:
    """JSON for ``*.json`` (YAML refuses the tabs JSON may be indented with), YAML's safe subset otherwise."""
    try:
        if path.suffix.lower() == ".json":
            return json.loads(content, object_pairs_hook=_unique_keys)
        return yaml.load(content, Loader=_GridLoader)  # noqa: S506 -- a SafeLoader, refusing repeated keys
    except _RepeatedKey as repeated:
        raise HarnessError(f"grid file {path} gives the key {repeated.key!r} twice{repeated.where}; accepted: each "
                           "setting once (a later one would silently replace the first)") from None
    except json.JSONDecodeError as error:
        raise HarnessError(f"grid file {path} is not valid JSON at line {error.lineno}, column {error.colno}: "
                           f"{error.msg}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = (f" at line {mark.line + 1}, column {mark.column + 1}" if mark else
                 f" at character {error.position}" if isinstance(error, yaml.reader.ReaderError) else "")
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise HarnessError(f"grid file {path} is not valid YAML{where}: {' '.join(problem.split())}; accepted: plain "
                           "YAML (mappings, lists, strings, numbers, true/false; no tags that build objects)") from None
    except RecursionError:
        raise HarnessError(f"grid file {path} is nested too deeply to be run settings; accepted: keys mapping to "
                           f"names, numbers, lists and option mappings ({EXAMPLE})") from None
    except (ValueError, OverflowError) as error:  # a 5000-digit integer, a 13th month
        reason = " ".join(str(error).split()).partition(": ")[0]
        raise HarnessError(f"grid file {path} holds a value that cannot be read ({reason}); accepted: names, "
                           "numbers of ordinary size, lists and option mappings") from None


class _RepeatedKey(Exception):
    def __init__(self, key: str, where: str = "") -> None:
        super().__init__(key)
        self.key, self.where = key, where


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        raise _RepeatedKey(next(key for key in keys if keys.count(key) > 1))
    return dict(pairs)


class _GridLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently,
    so ``seeds: [0]`` further down would quietly replace ``seeds: [0, 1, 2]``)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if (key_node.tag, key_node.value) in seen:
                    raise _RepeatedKey(key_node.value, f" (again at line {key_node.start_mark.line + 1})")
                seen.add((key_node.tag, key_node.value))
        return super().construct_mapping(node, deep=deep)


def spec_from_settings(settings: dict[str, Any]) -> GridSpec:
    """A GridSpec from merged settings (file, then flags); absent keys take GridSpec's defaults."""
    fields: dict[str, Any] = {}
    for key in LIST_KEYS:
        if settings.get(key) is not None:
            fields[key] = _as_tuple(settings[key], key)
    if "seeds" in fields:
        fields["seeds"] = _seeds(fields["seeds"])
    options = {name: _as_options(settings.get(key), what) for key, (name, what) in
               zip(OPTION_KEYS, (("generator_options", "generator"), ("calibrator_options", "calibrator"),
                                 ("task_options", "task"), ("tuner_options", "tuner")))}
    for key in ("data_root", "checkpoint", "batch_size"):
        if settings.get(key) is not None:
            options["task_options"][key] = settings[key]
    limit = settings.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise HarnessError(f"limit must be a positive number of images, got {limit!r}")
    keep_first_last_fp = settings.get("keep_first_last_fp") or False
    if not isinstance(keep_first_last_fp, bool):
        raise HarnessError(f"keep_first_last_fp must be true or false, got {keep_first_last_fp!r}")
    if settings.get("deploy") not in (None, *DEPLOY_RUNTIMES):
        raise HarnessError(f"deploy accepts {', '.join(DEPLOY_RUNTIMES)}, got {settings['deploy']!r}")
    for key in ("profile", "attn_quantizer"):
        if settings.get(key) is not None and not isinstance(settings[key], str):
            raise HarnessError(f"{key} must be a name, got {settings[key]!r}")
    quant = QuantConfig(profile=settings.get("profile") or "standard", keep_first_last_fp=keep_first_last_fp,
                        attn_quantizer=settings.get("attn_quantizer") or "uniform")
    return GridSpec(**fields, **options, quant=quant, limit=limit, deploy=settings.get("deploy"))


def _seeds(values: tuple) -> tuple[int, ...]:
    """Seeds as integers in the range every random generator the harness seeds accepts."""
    seeds = []
    for value in values:
        try:
            seed = int(value) if not isinstance(value, (bool, float)) else None
        except ValueError:
            seed = None
        if seed is None:
            raise HarnessError(f"seeds must be integers, got {list(values)}")
        if not 0 <= seed <= MAX_SEED:
            raise HarnessError(f"seed {seed} is out of range; accepted: 0 to {MAX_SEED}")
        seeds.append(seed)
    return tuple(seeds)


def _as_tuple(value: Any, key: str) -> tuple:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, (list, tuple)):
        return tuple(str(item).strip() if key != "seeds" else item for item in value)
    if key == "seeds" and isinstance(value, int):
        return (value,)
    raise HarnessError(f"{key} must be a list or a comma-separated string, got {value!r}")


def _as_options(value: Any, what: str) -> dict[str, Any]:
    """``{key: value}`` from a YAML mapping or from repeated ``KEY=VALUE`` flags."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return parse_assignments(list(value), what)
    raise HarnessError(f"{what} options must be a mapping or KEY=VALUE items, got {value!r}")
