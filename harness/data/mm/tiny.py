"""Pieces of the tiny offline instances the detection/segmentation tasks build for tests and the conformance kit.

A tiny instance is a few synthetic images in the task's exact dataset layout, a config that
shrinks the real model family (random init, saved as a checkpoint the way mmengine saves one), and
ground truth made from the FP model's own predictions, so the FP model scores 100 by construction
and any quantization error shows as a drop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from harness.data.mm.config import load_config
from harness.data.mm.registry import build_model


def write_images(folder: Path, names: list[str], size: int, seed: int) -> list[Path]:
    """Images of a few coloured rectangles on a gradient, equal sizes (so batching pads nothing)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    paths = []
    for name in names:
        image = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), rng.uniform(0, 255, (size, size))], -1)
        for _ in range(3):
            top, left = rng.integers(0, size - size // 4, 2)
            height, width = rng.integers(size // 8, size // 2, 2)
            image[top:top + height, left:left + width] = rng.uniform(0, 255, 3)
        path = folder / name
        Image.fromarray(image.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def save_random_init(scope: str, config: Path, path: Path, seed: int) -> None:
    """The model of mmengine config file ``config``, built by ``scope`` (mmdet, mmseg) from ``seed``, saved at ``path``."""
    torch.manual_seed(seed)
    save_checkpoint(build_model(scope, load_config(str(config)).model), path, seed)


def save_checkpoint(model: nn.Module, path: Path, seed: int) -> None:
    """Save as mmengine does: ``state_dict`` plus a ``meta`` with numpy scalars and a ``HistoryBuffer``."""
    from mmengine.logging import HistoryBuffer

    buffer = HistoryBuffer()
    buffer.update(np.float64(0.5))
    torch.save({"meta": {"seed": np.int64(seed), "loss": buffer}, "state_dict": model.state_dict()}, path)
