"""A base for classification tasks on timm models and a class-folder data set: subclasses name the
models, the class count and the layout; loading, the prior, real images and top-k evaluation are here."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

from harness.data.evaluation import topk_accuracy
from harness.data.image_folder.cache import preprocessed_images, split_transform
from harness.data.image_folder.data import LabelledImages, data_config, eval_transform, labelled_images
from harness.data.timm_weights import load_weights
from harness.errors import HarnessError
from harness.plugin.capabilities import CLASS_TOKEN
from harness.plugin.options import at_least
from harness.plugin.task import ImagePrior, Task, TaskOptions, calibration_indices
from harness.store.io import file_sha256

# workers that turn cached uint8 batches into normalized floats: ~30 ms a batch of 64 each, so four
# keep up with a GPU's forward; decoding JPEGs takes every core instead
CACHED_BATCH_WORKERS = 4


@dataclass
class ImageFolderOptions(TaskOptions):
    """``data_root`` falls back to the environment variable ``root_variable`` (when a subclass names one);
    ``num_workers`` (None: one per core available) decode images beside the model; ``eval_cache`` keeps
    decoded evaluation images for later evaluations (:mod:`harness.data.image_folder.cache`)."""

    root_variable: ClassVar[str | None] = None
    num_workers: int | None = at_least(0, None)
    eval_cache: bool = True

    def __post_init__(self) -> None:
        self.data_root = self.data_root or (self.root_variable and os.environ.get(self.root_variable)) or None
        if self.batch_size < 1 or (self.num_workers is not None and self.num_workers < 0):
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")

    def workers(self) -> int:
        """``num_workers``, or the cores this process may run on."""
        return len(os.sched_getaffinity(0)) if self.num_workers is None else self.num_workers


class ImageFolderTask(Task):
    """Top-k accuracy of timm classifiers on ``ROOT/<val_split>/<class>/<image>``; real calibration
    images come from ``ROOT/<train_split>`` only. Every image goes through timm's eval transform of the
    model's pretrained config, so FP accuracy matches timm's tables.

    Subclasses set ``name``, ``model_names`` (timm names, or override :meth:`timm_name`),
    ``num_classes`` and ``dataset``; they may override :meth:`class_index` (a fixed label list) and
    :meth:`default_checkpoint` (weights when ``--checkpoint`` is not given).
    """

    Options = ImageFolderOptions
    metric_names: ClassVar[tuple[str, ...]] = ("top1", "top5")
    num_classes: ClassVar[int]
    dataset: ClassVar[str]  # the data set's name in messages
    layout: ClassVar[str] = "<class>/<image>"  # what a split folder holds, in messages
    class_folder: ClassVar[str] = "a class folder"  # what a folder of a split must be, in messages
    val_split: ClassVar[str] = "val"
    train_split: ClassVar[str] = "train"

    def __init__(self, options: ImageFolderOptions | None = None) -> None:
        super().__init__(options)
        self._weights_ids: dict[str, str] = {}

    # timm's Swin family has no class token (docs/plugins.md, Support): a condition on the model, checked
    # from the architecture's module before the grid, without building the model
    offers = {**Task.offers, CLASS_TOKEN: "a model with a class token (ViT, DeiT; Swin has none)"}

    def unmet(self, capability: str, model_name: str) -> str | None:
        if capability != CLASS_TOKEN:
            return super().unmet(capability, model_name)
        architecture = timm.models.get_arch_name(self.timm_name(model_name))
        module = timm.models.model_entrypoint(architecture).__module__
        return f"{model_name} is a Swin Transformer, which has no class token" if "swin" in module else None

    def timm_name(self, model_name: str) -> str:
        """The timm architecture (and pretrained config, for the transform) of a registered model."""
        return model_name

    def class_index(self) -> Mapping[str, int] | None:
        """Class folder name -> label; None numbers each split's folders in sorted order (``ImageFolder``)."""
        return None

    def default_checkpoint(self, model_name: str) -> Path:
        """The weights file used without ``--checkpoint``; there is none unless a subclass knows one."""
        raise HarnessError(f"{self.name}: no weights for {model_name}; pass --checkpoint FILE")

    def labelled_images(self, split_dir: Path) -> list[tuple[Path, int]]:
        """The (path, label) pairs of one split folder, sorted."""
        return labelled_images(split_dir, self.class_index(), self.layout, self.class_folder)

    def load_model(self, model_name: str) -> nn.Module:
        model = timm.create_model(self.timm_name(self._checked(model_name)), pretrained=False,
                                  num_classes=self.num_classes)
        load_weights(model, model_name, self._checkpoint(model_name))
        return model.eval()

    def prior(self, model_name: str) -> ImagePrior:
        config = data_config(self.timm_name(self._checked(model_name)))
        return ImagePrior(input_size=tuple(config["input_size"]), mean=tuple(config["mean"]),
                          std=tuple(config["std"]), num_classes=self.num_classes)

    def calibration_images(self, model_name: str, num_images: int, seed: int) -> torch.Tensor:
        split = self._root() / self.train_split
        samples = self.labelled_images(split)
        chosen = calibration_indices(len(samples), num_images, seed, str(split))
        loader = self._loader([samples[i] for i in chosen], model_name)
        return torch.cat([images for images, _ in loader])

    def evaluate(self, model: nn.Module, model_name: str, limit: int | None = None) -> dict[str, float]:
        split = self._root() / self.val_split
        samples = self.labelled_images(split)[:limit]
        transform = eval_transform(self.timm_name(self._checked(model_name)))
        parts = split_transform(transform) if self.options.eval_cache else None
        if parts is None:
            loader = self._loader(samples, model_name)
        else:
            cached = preprocessed_images(samples, parts.pixels, split, self.options.workers())
            loader = cached.loader(self.options.batch_size, parts.tensor,
                                   min(CACHED_BATCH_WORKERS, self.options.workers()))
        topk = tuple(int(metric.removeprefix("top")) for metric in self.metric_names)
        return topk_accuracy(model, loader, topk=topk, total=len(loader))

    def evaluation_size(self, model_name: str) -> int:
        return len(self.labelled_images(self._root() / self.val_split))

    def weights_id(self, model_name: str) -> str:
        if model_name not in self._weights_ids:
            self._weights_ids[model_name] = file_sha256(self._checkpoint(self._checked(model_name)))
        return self._weights_ids[model_name]

    def check_environment(self, model_name: str) -> None:
        super().check_environment(model_name)
        if not (self._root() / self.val_split).is_dir():
            raise HarnessError(f"{self.name}: {self._root() / self.val_split} not found ({self._expected_layout()})")
        self._checkpoint(self._checked(model_name))

    def _checked(self, model_name: str) -> str:
        if model_name not in self.model_names:
            raise HarnessError(f"model {model_name!r} is not a model of task {self.name!r}; "
                               f"accepted: {', '.join(self.model_names)}")
        return model_name

    def _checkpoint(self, model_name: str) -> Path:
        if self.options.checkpoint:
            return Path(self.options.checkpoint).expanduser()
        return self.default_checkpoint(model_name)

    def _expected_layout(self) -> str:
        return f"expected layout DIR/{self.val_split}/{self.layout}"

    def _root(self) -> Path:
        if not self.options.data_root:
            variable = self.options.root_variable
            alternative = f" or set {variable}" if variable else ""
            raise HarnessError(f"{self.name} needs the {self.dataset} root: pass --data-root DIR{alternative} "
                               f"({self._expected_layout()})")
        return Path(self.options.data_root).expanduser()

    def _loader(self, samples: list[tuple[Path, int]], model_name: str) -> DataLoader:
        dataset = LabelledImages(samples, eval_transform(self.timm_name(self._checked(model_name))))
        return DataLoader(dataset, batch_size=self.options.batch_size, num_workers=self.options.workers())
