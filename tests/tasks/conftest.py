"""Tiny COCO / ADE20K instances for the detection and segmentation tests (skipped without the `detseg` extra)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from harness.data.mm.stack import available
from harness.entry.cli import main
from harness.plugin.conformance import TaskSetup
from harness.plugin.registry import METHODS
from harness.store.records import ResultStore

REPOSITORY = Path(__file__).resolve().parents[2]


def _require_detseg() -> None:
    reason = available()
    if reason is not None:
        pytest.skip(f"needs the detseg extra: {reason}")


@pytest.fixture(scope="session")
def detseg() -> None:
    """Skips a test without the `detseg` extra."""
    _require_detseg()


@pytest.fixture(scope="session")
def instrumented_blocks(detseg) -> Callable[[Any, str], int]:
    """Builds a registered model from its config; returns how many attention modules of its backbone the quantizer instruments."""
    from harness.data.mm.registry import build_model
    from harness.model.arch import instrumented, is_instrumented_attention

    def count(task: Any, name: str) -> int:
        with instrumented(build_model(task.scope, task.config(name).model).backbone) as backbone:
            return sum(map(is_instrumented_attention, backbone.modules()))
    return count


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> TaskSetup:
    _require_detseg()
    from tasks.coco.tiny import write_tiny_coco

    return write_tiny_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="session", params=["upernet_swin_t", "upernet_deit_s"])
def tiny_ade20k(request, tmp_path_factory) -> TaskSetup:
    _require_detseg()
    from tasks.ade20k.tiny import write_tiny_ade20k

    return write_tiny_ade20k(tmp_path_factory.mktemp("ade20k"), request.param)


def run_argv(setup: TaskSetup, out: Path, *args: str) -> list[str]:
    """``run`` on a tiny instance: its data root, checkpoint, model and options, small synthesis budgets."""
    options = dict(setup.options)
    budgets = [item for generator, option in SMALL_BUDGETS if generator in _generators(args)
               for item in ("--gen-opt", f"{generator}.{option}")]  # a scope must be a plugin of the grid
    return ["run", "--data-root", options.pop("data_root"), "--checkpoint", options.pop("checkpoint"),
            "--models", setup.model_name, "--results", str(out), "--no-report", "--no-progress", *budgets,
            *[item for key, value in options.items() for item in ("--task-opt", f"{key}={value}")], *args]


# the timm ImageNet classifier of each tiny backbone's architecture (tasks/coco/tiny.py, tasks/ade20k/tiny.py)
TINY_CLASSIFIERS = {
    "swin": ("swin_tiny_patch4_window7_224", dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))),
    "deit": ("deit_small_patch16_224", dict(embed_dim=32, depth=4, num_heads=2, patch_size=8)),
}


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Callable[..., str]:
    """A random-init ImageNet classifier of a tiny instance's backbone architecture, at its prior size (or
    ``size``), as a safetensors file: the class source (--task-opt prior_classifier=FILE) where no hub cache is."""
    import timm
    import torch
    from safetensors.torch import save_file

    def write(setup: TaskSetup, size: int | None = None) -> str:
        family = "deit" if "deit" in setup.model_name else "swin"
        size = size or setup.options["prior_size"]
        path = tmp_path_factory.getbasetemp() / f"tiny_{family}_{size}px_classifier.safetensors"
        if not path.exists():
            name, architecture = TINY_CLASSIFIERS[family]
            torch.manual_seed(1)
            model = timm.create_model(name, pretrained=False, img_size=size, **architecture)
            save_file({key: value.contiguous() for key, value in model.state_dict().items()}, path)
        return str(path)
    return write


@pytest.fixture(scope="session")
def grid_argv() -> Callable[..., list[str]]:
    """:func:`run_argv`, for tests that call ``main`` with other flags (``--dry-run``)."""
    return run_argv


@pytest.fixture(scope="session")
def run_grid() -> Callable[..., list[dict[str, Any]]]:
    """``python -m harness run`` on a tiny instance (small synthesis budgets); returns the records of ``out``."""
    def run(setup: TaskSetup, out: Path, *args: str) -> list[dict[str, Any]]:
        assert main(run_argv(setup, out, *args)) == 0
        return list(ResultStore(out).records())
    return run


@pytest.fixture(scope="session")
def warnings_printed() -> Callable[..., tuple[int, list[str]]]:
    """``python -m harness run`` as a user starts it (a fresh interpreter, no test-runner warning filters)
    on a tiny instance; returns its exit status and the warnings it printed: Python's on stderr
    (``file:line: XWarning: ...``) and mmengine's logger's on either stream (``... - mmengine - WARNING - ...``)."""
    def run(setup: TaskSetup, out: Path, *args: str) -> tuple[int, list[str]]:
        environment = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
        completed = subprocess.run([sys.executable, "-m", "harness", *run_argv(setup, out, *args), "--threads", "1"],
                                   cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=600)
        # the harness's own notice that fused kernels fell back to eager torch (on CPUs where torch.compile
        # cannot build them, e.g. generic kernels) is the harness speaking to the user, not a library's warning
        printed = [line for line in completed.stderr.splitlines()
                   if re.search(r"\w+Warning: ", line) and "fused kernels unavailable" not in line]
        logged = [line for line in (completed.stdout + completed.stderr).splitlines() if " - mmengine - WARNING - " in line]
        return completed.returncode, printed + logged
    return run


SMALL_BUDGETS = (("real", "num_images=4"), ("psaq", "iterations=8"), ("psaq", "warmup=2"))


def _generators(args: tuple[str, ...]) -> set[str]:
    """The generators a run with ``args`` uses: ``--data`` if given, else those of its ``--methods``."""
    flags = {flag: value for flag, value in zip(args, args[1:]) if flag in ("--data", "--methods")}
    if "--data" in flags:
        return {flags["--data"]}
    return {METHODS.get(name).generator for name in flags.get("--methods", "real,noise").split(",")}


def by_cell(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(record["method"], record["bits"]): record for record in records}
