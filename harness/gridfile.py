"""Grids as settings: the ``run`` flags, or the same keys in a versionable YAML file (``--grid``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.grid import DEPLOY_RUNTIMES, GridSpec
from harness.options import parse_assignments
from harness.quant.convert import QuantConfig

LIST_KEYS = ("methods", "tasks", "models", "bits", "seeds", "data", "calib")
OPTION_KEYS = {"gen_opt": "generator", "calib_opt": "calibrator", "task_opt": "task"}
SCALAR_KEYS = ("data_root", "checkpoint", "batch_size", "profile", "attn_quantizer",
               "keep_first_last_fp", "limit", "deploy")
GRID_KEYS = (*LIST_KEYS, *OPTION_KEYS, *SCALAR_KEYS)
MAX_SEED = 2**32 - 1  # 32-bit seeds: what numpy and every other seeded library accept


def load_grid_file(path: Path) -> dict[str, Any]:
    """Read a grid file; its keys are the long flags of ``run`` with ``_`` for ``-``."""
    try:
        settings = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise HarnessError(f"grid file {path} is unreadable: {error.strerror}") from error
    except UnicodeDecodeError:
        raise HarnessError(f"grid file {path} is not a text file; a grid file is YAML text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise HarnessError(f"grid file {path} is not valid YAML{where}: {getattr(error, 'problem', error)}") from error
    if not isinstance(settings, dict):
        raise HarnessError(f"grid file {path} must be a mapping of run settings (e.g. 'methods: [real, noise]')")
    unknown = sorted(set(settings) - set(GRID_KEYS))
    if unknown:
        raise HarnessError(f"grid file {path} has unknown key {unknown[0]!r}; accepted: {', '.join(GRID_KEYS)}")
    return settings


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
                                 ("task_options", "task")))}
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
