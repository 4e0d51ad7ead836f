"""The two halves of every method (docs/methods.md, Generators and calibrators): a calibration-data generator and a calibrator."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from harness.plugin.capabilities import REAL_IMAGES
from harness.plugin.options import at_least
from harness.plugin.task import ImagePrior, Task
from harness.quant.bits import BitSpec
from harness.quant.objectives import LogitDivergence, OutputObjective


@dataclass
class CalibrationSet:
    """Calibration images in the model's normalized input space, plus what made them."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationContext:
    """Everything a generator may use: the FP model (frozen), the task's prior, a seed.

    ``task`` (and with it the task's real images) is given only to generators that declare
    ``uses_real_data``; a data-free generator gets None, so it has no path to real data.
    """

    task: Task | None
    model_name: str
    # what images are synthesized through (Task.synthesis_target): the backbone (README, Tasks), a classifier
    # itself, or a detector's or segmentor's backbone, or for a generator that needs classes there the
    # task's class source (docs/methods.md, Class sources)
    model: nn.Module
    prior: ImagePrior
    seed: int
    device: torch.device
    # the quantized model being fine-tuned, when a tuner asks for fresh images during tuning
    # (harness.plugin.tuner.TuningContext.synthesize); None for the calibration set made before quantization
    quantized_model: nn.Module | None = None


@dataclass
class CalibrationContext:
    """What a calibrator sees besides the quantized model: the FP teacher and the images."""

    fp_model: nn.Module
    calibration: CalibrationSet
    bits: BitSpec
    seed: int
    device: torch.device
    batch_size: int = 32
    # the backbone within a quantized part (teacher's or student's): what feature-matching calibrators
    # compare (PSAQ-ViT V2); the part itself for classifiers and backbone-only quantization
    backbone: Callable[[nn.Module], nn.Module] = lambda part: part
    # the task's prior of the images (their pixel range, whatever generator made them); the runner always
    # gives it, a calibrator that needs it (psaq_v2) says so when a hand-built context leaves it out
    prior: ImagePrior | None = None
    # the task's objective on the part's output at a logit temperature (Task.output_objective, capability
    # ``objective``): what gradient-weighted calibrators (aphq) weigh by; a classifier's logits by default
    output_objective: Callable[[float], OutputObjective] = LogitDivergence


@dataclass
class NoOptions:
    """For plugins without options."""


class Stage(ABC):
    """What the plugins of a cell's stages share (generator, calibrator, tuner): typed options, a version to
    bump when a change moves its results (docs/results.md: code versions), fast options for the conformance
    kit, and what it needs from a task (harness.plugin.support)."""

    Options: ClassVar[type] = NoOptions
    version: ClassVar[str] = "1"
    smoke_options: ClassVar[dict | None] = None
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def required(self) -> frozenset[str]:
        """What this instance needs from a task: ``needs``, plus what its options add (docs/plugins.md, Support)."""
        return self.needs


class Generator(Stage):
    """Produces calibration images. ``bit_independent`` generators are cached across bit widths."""

    bit_independent: ClassVar[bool] = True
    in_pixel_range: ClassVar[bool] = True  # images stay inside ImagePrior.clamp_bounds()
    uses_real_data: ClassVar[bool] = False  # True: the context carries the task, and so its real images

    def required(self) -> frozenset[str]:
        """What this instance needs from a task: ``needs``, real images where ``uses_real_data``, plus what
        its options add (docs/plugins.md, Support)."""
        return self.needs | ({REAL_IMAGES} if self.uses_real_data else frozenset())

    @abstractmethod
    def generate(self, context: GenerationContext) -> CalibrationSet:
        """Return calibration images for ``context.model``."""


class Calibrator(Stage):
    """Fits a quantized model's parameters (ranges, scales, maybe weights) on calibration images.

    ``supports_mixed_precision`` calibrators accept ``mpX`` bit specs: the model arrives with every
    layer at X weight bits and the calibrator reallocates per-layer bits under that average.
    """

    supports_mixed_precision: ClassVar[bool] = False

    def unmet_bits(self, bits: BitSpec) -> str | None:
        """Why these options cannot calibrate at ``bits`` (None: they can). Asked for every cell before a grid's
        first one runs, so a search too coarse for a bit width is one line, not a failed cell."""
        return None

    @abstractmethod
    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> dict[str, Any] | None:
        """Calibrate ``qmodel`` in place and freeze its ranges; what it returns goes into the record."""


@dataclass(frozen=True)
class MethodSpec:
    """A named pairing of a default generator and calibrator (their options may be overridden), and for
    methods whose protocol fine-tunes (docs/methods.md, Fine-tuning) the tuner that follows them."""

    generator: str
    calibrator: str
    description: str = ""
    tuner: str | None = None


@dataclass
class ImageCountOptions:
    """The option every image generator shares."""

    num_images: int = at_least(1, 32)  # docs/methods.md, Baselines: 32 calibration images
