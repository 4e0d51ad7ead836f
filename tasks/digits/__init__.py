"""Offline task ``digits``: scikit-learn's digits at 16x16 with two small ViTs shipped with the package.

A smoke-level benchmark (16 patches): it separates methods only at very low activation bits, and
orderings must be read over several calibration seeds and both models.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from harness.api import TASKS, HarnessError, ImagePrior, Task, calibration_indices, register_models
from harness.api.data import file_sha256, load_weights, tensor_batches, topk_accuracy
from tasks.digits.data import IMAGE_SIZE, MEAN, STD, load_splits, normalize
from tasks.digits.model import build_model
from tasks.digits.shipped import MODEL_SEEDS, shipped_weights


@TASKS.register("digits")
class DigitsTask(Task):
    """Top-1 on the 30 % test split; real calibration images come from the train split only."""

    metric_names = ("top1",)
    model_names = register_models("digits", {
        name: f"timm ViT 16px/patch 4, dim 64, depth 4, shipped (trained with seed {seed})"
        for name, seed in MODEL_SEEDS.items()
    })

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._weights: dict[str, tuple[Path, str]] = {}  # model -> shipped file, its sha256

    def _weights_file(self, model_name: str) -> tuple[Path, str]:
        """The shipped weights, or ``--checkpoint`` (e.g. a model retrained by ``python -m tasks.digits.train``)."""
        if model_name not in MODEL_SEEDS:
            raise HarnessError(f"model {model_name!r} is not a digits model; accepted: {', '.join(MODEL_SEEDS)}")
        if model_name not in self._weights:
            checkpoint = self.options.checkpoint
            self._weights[model_name] = ((Path(checkpoint).expanduser(), file_sha256(Path(checkpoint).expanduser()))
                                         if checkpoint else shipped_weights(model_name))
        return self._weights[model_name]

    def check_environment(self, model_name: str) -> None:
        super().check_environment(model_name)
        if self.options.data_root:
            raise HarnessError("--data-root is not used by digits: its images ship with scikit-learn")

    def load_model(self, model_name: str) -> nn.Module:
        model = build_model()
        load_weights(model, model_name, self._weights_file(model_name)[0])  # a misfit or non-finite file: one line
        return model.eval()

    def prior(self, model_name: str) -> ImagePrior:
        return ImagePrior(input_size=(1, IMAGE_SIZE, IMAGE_SIZE), mean=MEAN, std=STD, num_classes=10)

    def calibration_images(self, model_name: str, num_images: int, seed: int) -> torch.Tensor:
        train = load_splits()[0]
        index = calibration_indices(len(train.labels), num_images, seed, "the digits training split")
        return normalize(train.pixels[index])

    def evaluate(self, model: nn.Module, model_name: str, limit: int | None = None) -> dict[str, float]:
        test = load_splits()[1]
        images, labels = normalize(test.pixels[:limit]), test.labels[:limit]
        batch_size = self.options.batch_size
        return topk_accuracy(model, tensor_batches(images, labels, batch_size), topk=(1,),
                             total=math.ceil(len(labels) / batch_size))

    def evaluation_size(self, model_name: str) -> int:
        return len(load_splits()[1].labels)

    def weights_id(self, model_name: str) -> str:
        return self._weights_file(model_name)[1][:16]
