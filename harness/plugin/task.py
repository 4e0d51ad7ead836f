"""What a task plugin provides: a model family, its evaluation data and metric, and its image prior."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from harness.data.weights import check_finite
from harness.errors import HarnessError
from harness.plugin.capabilities import ATTENTION, BLOCKS, CLASS_TOKEN, CLASSES, LOGITS, OBJECTIVE, REAL_IMAGES
from harness.plugin.options import at_least
from harness.quant.objectives import LogitDivergence, OutputObjective


# Every task reports its metrics in percent (top-1, box AP, mIoU, ...): conformance checks evaluate()
# against it, and a cached FP metric outside it is no measurement (harness.store.records.read_fp_metric).
METRIC_RANGE = (0.0, 100.0)


@dataclass(frozen=True)
class ImagePrior:
    """What a generator may know about the inputs: shape, normalization, classes (docs/methods.md, Generators and calibrators)."""

    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int | None = None

    def clamp_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel bounds of pixels in [0, 1] after normalization, shaped (1, C, 1, 1)."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (0 - mean) / std, (1 - mean) / std

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Back to pixels in [0, 1] (for galleries and exports)."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0, 1)


@dataclass(frozen=True)
class SynthesisTarget:
    """What a generator synthesizes through: a module taking images of ``prior``, and that prior.

    ``class_source`` names, for the record and the calibration-set cache key, where the class logits
    come from when they are not the model's own (docs/methods.md, Class sources); None otherwise.
    """

    prior: ImagePrior
    load: Callable[[], nn.Module]  # called only when images are made (a cached set needs no model)
    class_source: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: the task that owns it and a one-line description for ``list``."""

    task: str
    description: str = ""


@dataclass
class TaskOptions:
    """Options every task accepts; tasks extend it with their own fields."""

    data_root: str | None = None
    checkpoint: str | None = None
    batch_size: int = at_least(1, 64)


class Task(ABC):
    """A task plugin. Subclasses register with ``@TASKS.register(name)`` and list their models."""

    name: ClassVar[str]  # set by the registration (registered_as)
    model_names: ClassVar[tuple[str, ...]]
    metric_names: ClassVar[tuple[str, ...]]
    Options: ClassVar[type] = TaskOptions
    version: ClassVar[str] = "1"  # bump when models, data or metric change a result (docs/results.md)
    # what it offers generators and calibrators (harness.plugin.support): capability -> None (always) or, in
    # words, what the user supplies for it (checked by `unmet`); the default fits a classifier on a ViT
    # family the quantizer instruments
    offers: ClassVar[Mapping[str, str | None]] = {CLASSES: None, REAL_IMAGES: None, ATTENTION: None, BLOCKS: None,
                                                  CLASS_TOKEN: None, LOGITS: None, OBJECTIVE: None}

    @classmethod
    def registered_as(cls, name: str) -> None:
        """Called by ``TASKS`` on registration: the task's name is the one it is registered under."""
        cls.name = name

    def __init__(self, options: TaskOptions | None = None) -> None:
        self.options = options or self.Options()

    @abstractmethod
    def load_model(self, model_name: str) -> nn.Module:
        """The full-precision model in eval mode, weights loaded (offline)."""

    @abstractmethod
    def prior(self, model_name: str) -> ImagePrior:
        """Input shape, normalization and class count used by generators."""

    @abstractmethod
    def calibration_images(self, model_name: str, num_images: int, seed: int) -> torch.Tensor:
        """Real images from the task's training (or calibration) split, normalized for the model."""

    @abstractmethod
    def evaluate(self, model: nn.Module, model_name: str, limit: int | None = None) -> dict[str, float]:
        """Metric values (in percent) of ``model`` on the evaluation split."""

    @abstractmethod
    def weights_id(self, model_name: str) -> str:
        """A short hash of the model's weights, part of the generator cache key."""

    def evaluation_size(self, model_name: str) -> int | None:
        """Images in the evaluation split, or None when unknown without reading it all.

        A ``--limit`` at or above it evaluates everything, so the runner records it as no limit: one
        configuration, one leaderboard row.
        """
        return None

    def check_environment(self, model_name: str) -> None:
        """Raise a one-line HarnessError if the files a cell of ``model_name`` reads are missing.

        The runner calls it for every (task, model) of a grid before the first cell, so a wrong
        path is one message, not one error record per cell. Tasks that need a data root or weights
        from a cache extend it.
        """
        checkpoint = getattr(self.options, "checkpoint", None)
        if checkpoint and not Path(checkpoint).expanduser().is_file():
            raise HarnessError(f"--checkpoint {checkpoint}: no such file")
        data_root = getattr(self.options, "data_root", None)
        if data_root and not Path(data_root).expanduser().is_dir():
            raise HarnessError(f"--data-root {data_root}: no such directory")

    def check_weights(self, model_name: str) -> None:
        """Load the FP model once from a ``--checkpoint`` file before the grid: an empty, truncated or
        misfitting file, or one holding inf/NaN, is then one error rather than an error record per cell
        (or an ok record whose collapse is blamed on the calibration images, issue 31).

        The loaded tensors are checked here, whatever reader the task uses; the harness's own readers
        (harness.data.weights) also check at every load, so a cell never computes an FP metric from them.
        """
        checkpoint = getattr(self.options, "checkpoint", None)
        if checkpoint:
            check_finite(self.load_model(model_name).state_dict(), Path(checkpoint).expanduser())

    def backbone(self, model: nn.Module) -> nn.Module:
        """The module generators synthesize for (README, Tasks); a classifier is its own backbone."""
        return model

    def quantized_part(self, model: nn.Module) -> nn.Module:
        """The module the quantizer converts and calibrators fit, fed with the prior's images.

        The backbone by default; a detection/segmentation task may offer its neck and heads too.
        """
        return self.backbone(model)

    def part_backbone(self, part: nn.Module) -> nn.Module:
        """The backbone inside a :meth:`quantized_part` (the part itself when only the backbone is quantized)."""
        return part

    def quantization_scope(self) -> str:
        """What :meth:`quantized_part` covers, in words, for the result record."""
        return "whole model"

    def output_objective(self, fp_model: nn.Module, temperature: float) -> OutputObjective:
        """The objective on :meth:`quantized_part`'s output that calibrators weigh by (capability ``objective``,
        harness.quant.objectives): a classifier's logits at ``temperature``. A task that offers no objective
        raises HarnessError; ``fp_model`` is the whole FP model, for tasks whose objective lies beyond the part."""
        return LogitDivergence(temperature)

    def synthesis_target(self, model_name: str, fp_model: nn.Module, classes: bool) -> SynthesisTarget:
        """What a generator synthesizes through; ``classes``: it needs class logits (harness.plugin.support.CLASSES).

        The backbone with the task's prior by default: a classifier's classes are its own. A task
        whose backbone has none returns its class source when asked for classes.
        """
        return SynthesisTarget(self.prior(model_name), lambda: self.backbone(fp_model))

    def unmet(self, capability: str, model_name: str) -> str | None:
        """Why these options cannot meet the conditional offer of ``capability`` for ``model_name`` (None: they do).

        Called before a grid's first cell for each offer whose condition is not None, so a missing
        file or option is named before anything runs.
        """
        return None


def calibration_indices(available: int, num_images: int, seed: int, source: str) -> list[int]:
    """Which of ``available`` training images ``seed`` picks for `real` calibration (docs/methods.md, Baselines: a seeded draw).

    Asking for more than there are is an error naming ``source``.
    """
    if num_images > available:
        raise HarnessError(f"{source} has {available} images; asked for {num_images}")
    return torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:num_images].tolist()
