"""What a quantized part's output is judged by, differentiably: the task's objective, whose gradient at a unit's
output weighs APHQ-ViT's reconstruction (docs/methods.md, APHQ-ViT, The task's objective).

A task offers one (capability ``objective``, :meth:`harness.plugin.task.Task.output_objective`): a classifier
its class logits (KL divergence at a temperature), a two-stage detector its RPN's objectness and boxes. The
objective also says how APHQ-ViT's code perturbs and weighs for that kind of output: the perturbation δ, and
whether the Hessian stays per image (normalized to mean 1, the authors' detection code) or is averaged over
the images (their classification code).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn


class OutputObjective(ABC):
    """``loss(outputs(part, images), reference(outputs(fp_part, images)))``: 0-gradient at the FP outputs."""

    perturbation: float = 1e-6  # δ: the unit's output shifted by ±δ in the FP model (APHQ-ViT)
    per_image: bool = False  # Hessian per image, normalized to mean 1 (True), or averaged over images

    def outputs(self, part: nn.Module, images: Tensor) -> Any:
        """What the objective compares, from the (quantized or FP) part on ``images``: by default its output."""
        return part(images)

    @abstractmethod
    def reference(self, fp_outputs: Any) -> Any:
        """The FP part's outputs as the loss compares them (detached)."""

    @abstractmethod
    def loss(self, outputs: Any, reference: Any) -> Tensor:
        """A scalar whose gradient the reconstruction weighs by."""


class LogitDivergence(OutputObjective):
    """A classifier's objective: KL(softmax(FP logits / T) ‖ softmax(logits / T)), batch mean."""

    def __init__(self, temperature: float = 20.0) -> None:
        self.temperature = temperature

    def reference(self, fp_outputs: Tensor) -> Tensor:
        return F.softmax(fp_outputs / self.temperature, dim=-1)

    def loss(self, outputs: Tensor, reference: Tensor) -> Tensor:
        return F.kl_div(F.log_softmax(outputs / self.temperature, dim=-1), reference, reduction="batchmean")


def binary_kl(probabilities: Tensor, reference: Tensor, eps: float = 1e-7) -> Tensor:
    """Per image: the mean over its elements of KL(Bernoulli(reference) ‖ Bernoulli(probabilities)), both
    clamped to [eps, 1 - eps]."""
    p, q = probabilities.clamp(eps, 1 - eps), reference.clamp(eps, 1 - eps)
    divergence = q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())
    return divergence.flatten(1).mean(dim=1)
