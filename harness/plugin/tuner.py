"""The optional third stage of a cell (docs/methods.md, Fine-tuning): after calibration, a tuner trains the
calibrated quantized model on the cell's calibration images, distilling from the FP model.

Calibration-only and fine-tuned results are two protocols of the field (docs/results.md, Protocols): a
cell's tuner and its options enter its identity, its record and its row label, so the two never share
a leaderboard row. A tuner starts from the calibrator's ranges and leaves every quantizer frozen.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from harness.plugin.method import CalibrationContext, CalibrationSet, Stage

NO_TUNING = "none"  # --tune none: calibration only, what every cell was before tuners existed


@dataclass
class TuningContext(CalibrationContext):
    """What a tuner sees: everything a calibrator sees, the calibrated images included, and for tuners that
    take turns with synthesis a way to make fresh images against the current quantized model.

    ``synthesize(quantized, round)`` returns a new set from the cell's generator, made against the quantized
    model being tuned (``GenerationContext.quantized_model``) and seeded for ``round`` >= 1; such sets depend
    on the tuner's state, so they are never cached: the cached calibration set stays what the generator made
    before any tuning (docs/methods.md, Fine-tuning). None where a hand-built context has no generator.
    """

    synthesize: Callable[[nn.Module, int], CalibrationSet] | None = None


class Tuner(Stage):
    """Trains a calibrated quantized model (weights and quantizer scales) on the calibration images."""

    @abstractmethod
    def tune(self, qmodel: nn.Module, context: TuningContext) -> dict[str, Any] | None:
        """Train ``qmodel`` in place; its quantizers stay frozen. What it returns goes into the record."""


def epoch_cosine(epoch: int, epochs: int, floor: float) -> float:
    """A tuner's learning rate in ``epoch`` as a share of the base: a cosine from 1 to ``floor`` over ``epochs``,
    taken at epoch + 1 (MaskAQ steps its schedule at the start of every epoch, so its first epoch is already
    below the peak; docs/methods.md, Fine-tuning)."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (epoch + 1) / epochs))
