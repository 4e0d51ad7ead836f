"""Code shown in the docs works as shown: copied into a project, it registers and passes the conformance kit."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from harness.plugin.conformance import Hooks, TaskSetup, check
from harness.plugin.registry import GENERATORS, METHODS, MODELS, TASKS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_block(document: Path, heading: str) -> str:
    """The first ```python block under ``## heading`` of ``document``."""
    section = document.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def fresh_registries(monkeypatch):
    """Registrations made by a test vanish after it, so a docs example may reuse any name."""
    for registry in (GENERATORS, METHODS, TASKS, MODELS):
        registry.names()  # discover the real plugins first, so they are not imported into the copy later
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))


def test_the_worked_noise_example_conforms(fresh_registries):
    source = python_block(DOCS / "plugins.md", "Worked example: `methods/noise`")
    renamed = source.replace('"noise"', '"docs_noise"')  # "noise" itself is registered by methods/noise
    assert renamed.count('"docs_noise"') == 3, "the example registers a generator and a method pairing it"
    exec(compile(renamed, "docs/plugins.md", "exec"), {"__name__": "docs_example"})
    check("generator", "docs_noise")
    check("method", "docs_noise")


def tiny_flowers(workdir: Path) -> TaskSetup:
    """Two classes of two random JPEGs per split and random-init weights with the task's 102 classes."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("daisy", "rose"):
            (workdir / split / name).mkdir(parents=True)
            for index in range(2):
                image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(image).save(workdir / split / name / f"{index}.jpg")
    torch.manual_seed(0)
    torch.save(timm.create_model("deit_tiny_patch16_224", num_classes=102).state_dict(), workdir / "weights.pth")
    return TaskSetup(options={"data_root": str(workdir), "checkpoint": str(workdir / "weights.pth"), "num_workers": 0},
                     model_name="flowers_deit_tiny", limit=None)


def test_the_image_folder_task_example_conforms(fresh_registries, tmp_path, monkeypatch):
    monkeypatch.setenv("DFQ_HARNESS_CACHE", str(tmp_path / "cache"))  # the decoded-image cache
    source = python_block(DOCS / "plugins.md", "Image-folder classification tasks")
    exec(compile(source, "docs/plugins.md", "exec"), {"__name__": "docs_flowers"})
    task = TASKS.get("flowers")(TASKS.get("flowers").Options(**tiny_flowers(tmp_path / "flowers").options))
    assert [label for _, label in task.labelled_images(tmp_path / "flowers" / "val")] == [0, 0, 1, 1]
    check("task", "flowers", Hooks(task_setups={"flowers": tiny_flowers}))


def test_the_readme_python_example_runs_and_a_second_call_reuses_every_cell(tmp_path, monkeypatch, capsys):
    """README, From Python, as written (results/ in a fresh working folder), twice."""
    monkeypatch.chdir(tmp_path)
    source = python_block(DOCS.parent / "README.md", "From Python")
    exec(compile(source, "README.md", "exec"), {"__name__": "readme_example"})
    assert "4 computed, 0 reused" in capsys.readouterr().out
    namespace = {"__name__": "readme_example"}
    exec(compile(source, "README.md", "exec"), namespace)
    assert "0 computed, 4 reused" in capsys.readouterr().out
    board = namespace["result"].leaderboard
    assert sorted(board["label"]) == ["noise", "real"] and set(board["seeds"]) == {2}
    assert len(list((tmp_path / "results" / "records").glob("*.json"))) == 4
