"""Data for OpenMMLab tasks: real calibration images at the backbone's resolution, and the evaluation loop."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from timm.data import create_transform
from torch import nn
from torch.utils.data import DataLoader

from harness.data.mm.stack import quiet
from harness.errors import HarnessError
from harness.plugin.task import ImagePrior, calibration_indices
from harness.progress import progress_bar
from harness.store.io import IMAGE_SUFFIXES


def folder_images(folder: Path, num_images: int, seed: int, prior: ImagePrior) -> torch.Tensor:
    """``num_images`` images drawn with ``seed`` from ``folder``, resized and center-cropped to the prior's size.

    docs/methods.md, Task-agnostic backbones: calibration happens at the backbone's pre-training resolution, with the detector's
    or segmentor's own normalization (the prior's mean/std).
    """
    if not folder.is_dir():
        raise HarnessError(f"no training images for `real` calibration: {folder} does not exist")
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    chosen = calibration_indices(len(paths), num_images, seed, str(folder))
    transform = create_transform(input_size=prior.input_size, crop_pct=1.0, interpolation="bilinear",
                                 mean=prior.mean, std=prior.std)
    return torch.stack([transform(Image.open(paths[i]).convert("RGB")) for i in chosen])


def predictions(model: nn.Module, dataset: Any, batch_size: int, num_workers: int,
                description: str) -> Iterator[tuple[dict, list]]:
    """(batch, predicted data samples) of ``model.test_step`` over ``dataset``, in order."""
    from mmengine.dataset import pseudo_collate

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=pseudo_collate)
    model.eval()
    with torch.no_grad():
        for batch in progress_bar(loader, desc=description, leave=False):
            yield batch, model.test_step(batch)


def evaluate(model: nn.Module, dataset: Any, metric: Any, batch_size: int, num_workers: int,
             description: str) -> dict[str, float]:
    """The raw values of the mmengine ``metric`` for ``model`` on ``dataset``."""
    from mmengine.evaluator import Evaluator

    evaluator = Evaluator(metric)
    evaluator.dataset_meta = dataset.metainfo
    for batch, outputs in predictions(model, dataset, batch_size, num_workers, description):
        evaluator.process(data_samples=outputs, data_batch=batch)
    with quiet():
        return evaluator.evaluate(len(dataset))
