"""Task ``imagenet``: ImageNet-1k val top-1/top-5 of timm's DeiT, ViT and Swin models (README, Tasks).

Weights come from ``--checkpoint``, the local Hugging Face hub cache or the hub
(:mod:`harness.timm_weights`), data from ``--data-root`` (or ``$IMAGENET_ROOT``) in the standard
folder layout. Val images are decoded once per eval transform into a shared cache
(:mod:`tasks.imagenet.cache`); ``--task-opt eval_cache=false`` decodes in every evaluation instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

from harness.errors import HarnessError
from harness.evaluation import topk_accuracy
from harness.io import file_sha256
from harness.options import at_least
from harness.registry import TASKS
from harness.task import ImagePrior, Task, TaskOptions, calibration_indices, register_models
from harness.timm_weights import hub_checkpoint, load_weights
from tasks.imagenet.cache import preprocessed_images, split_transform
from tasks.imagenet.data import LabelledImages, data_config, eval_transform, labelled_images


# workers that turn cached uint8 batches into normalized floats: ~30 ms a batch of 64 each, so four
# keep up with a GPU's forward; decoding JPEGs takes every core instead
CACHED_BATCH_WORKERS = 4


@dataclass
class ImageNetOptions(TaskOptions):
    """``data_root`` falls back to ``$IMAGENET_ROOT``; ``num_workers`` (None: one per core available)
    decode JPEGs beside the model; ``eval_cache`` keeps decoded val images for later evaluations."""

    num_workers: int | None = at_least(0, None)
    eval_cache: bool = True

    def __post_init__(self) -> None:
        self.data_root = self.data_root or os.environ.get("IMAGENET_ROOT") or None
        if self.batch_size < 1 or (self.num_workers is not None and self.num_workers < 0):
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")

    def workers(self) -> int:
        """``num_workers``, or the cores this process may run on."""
        return len(os.sched_getaffinity(0)) if self.num_workers is None else self.num_workers


@TASKS.register("imagenet")
class ImageNetTask(Task):
    """Top-1/top-5 on ``ROOT/val``; real calibration images come from ``ROOT/train`` only."""

    name = "imagenet"
    metric_names = ("top1", "top5")
    Options = ImageNetOptions
    model_names = register_models("imagenet", {
        "deit_tiny_patch16_224": "timm DeiT-Ti/16, 224 px (5.7M params)",
        "deit_small_patch16_224": "timm DeiT-S/16, 224 px (22M params)",
        "deit_base_patch16_224": "timm DeiT-B/16, 224 px (86M params)",
        "vit_small_patch16_224": "timm ViT-S/16, 224 px, AugReg in21k -> in1k (22M params)",
        "vit_base_patch16_224": "timm ViT-B/16, 224 px, AugReg2 in21k -> in1k (86M params)",
        "swin_tiny_patch4_window7_224": "timm Swin-T, window 7, 224 px (28M params)",
        "swin_small_patch4_window7_224": "timm Swin-S, window 7, 224 px, in22k -> in1k (50M params)",
        "swin_base_patch4_window7_224": "timm Swin-B, window 7, 224 px, in22k -> in1k (88M params)",
    })

    def __init__(self, options: ImageNetOptions | None = None) -> None:
        super().__init__(options)
        self._weights_ids: dict[str, str] = {}

    def load_model(self, model_name: str) -> nn.Module:
        model = timm.create_model(self._checked(model_name), pretrained=False)
        load_weights(model, model_name, self._checkpoint(model_name))
        return model.eval()

    def prior(self, model_name: str) -> ImagePrior:
        config = data_config(self._checked(model_name))
        return ImagePrior(input_size=tuple(config["input_size"]), mean=tuple(config["mean"]),
                          std=tuple(config["std"]), num_classes=1000)

    def calibration_images(self, model_name: str, num_images: int, seed: int) -> torch.Tensor:
        samples = labelled_images(self._root() / "train")
        chosen = calibration_indices(len(samples), num_images, seed, str(self._root() / "train"))
        loader = self._loader([samples[i] for i in chosen], model_name)
        return torch.cat([images for images, _ in loader])

    def evaluate(self, model: nn.Module, model_name: str, limit: int | None = None) -> dict[str, float]:
        split = self._root() / "val"
        samples = labelled_images(split)[:limit]
        parts = split_transform(eval_transform(self._checked(model_name))) if self.options.eval_cache else None
        if parts is None:
            loader = self._loader(samples, model_name)
        else:
            cached = preprocessed_images(samples, parts.pixels, split, self.options.workers())
            loader = cached.loader(self.options.batch_size, parts.tensor,
                                   min(CACHED_BATCH_WORKERS, self.options.workers()))
        return topk_accuracy(model, loader, topk=(1, 5), total=len(loader))

    def evaluation_size(self, model_name: str) -> int:
        return len(labelled_images(self._root() / "val"))

    def weights_id(self, model_name: str) -> str:
        if model_name not in self._weights_ids:
            self._weights_ids[model_name] = file_sha256(self._checkpoint(self._checked(model_name)))
        return self._weights_ids[model_name]

    def check_environment(self, model_name: str) -> None:
        super().check_environment(model_name)
        if not (self._root() / "val").is_dir():
            raise HarnessError(f"imagenet: {self._root() / 'val'} not found (expected layout DIR/val/<wnid>/*.JPEG)")
        self._checkpoint(self._checked(model_name))

    def _checked(self, model_name: str) -> str:
        if model_name not in self.model_names:
            raise HarnessError(f"model {model_name!r} is not an imagenet model; accepted: {', '.join(self.model_names)}")
        return model_name

    def _checkpoint(self, model_name: str) -> Path:
        if self.options.checkpoint:
            return Path(self.options.checkpoint).expanduser()
        return hub_checkpoint(model_name)

    def _root(self) -> Path:
        if not self.options.data_root:
            raise HarnessError("imagenet needs the ImageNet root: pass --data-root DIR or set IMAGENET_ROOT "
                               "(expected layout DIR/val/<wnid>/*.JPEG)")
        return Path(self.options.data_root).expanduser()

    def _loader(self, samples: list[tuple[Path, int]], model_name: str) -> DataLoader:
        dataset = LabelledImages(samples, eval_transform(self._checked(model_name)))
        return DataLoader(dataset, batch_size=self.options.batch_size, num_workers=self.options.workers())
