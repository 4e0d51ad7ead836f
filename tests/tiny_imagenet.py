"""The imagenet task's tiny offline instance, shared by the conformance kit's hook and the support-matrix test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from harness.plugin.conformance import TaskSetup

IMAGENET_MODEL = "deit_tiny_patch16_224"


def tiny_imagenet(workdir: Path) -> TaskSetup:
    """Two classes of two random JPEGs per split and random-init DeiT-Ti weights: imagenet's contract, offline."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):  # classes 0 and 1 of timm's synset list
            folder = workdir / split / wnid
            folder.mkdir(parents=True)
            for index in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{index}.JPEG")
    torch.manual_seed(0)
    torch.save(timm.create_model(IMAGENET_MODEL, pretrained=False).state_dict(), workdir / "weights.pth")
    return TaskSetup(options={"data_root": str(workdir), "checkpoint": str(workdir / "weights.pth"), "num_workers": 0},
                     model_name=IMAGENET_MODEL, limit=None)
