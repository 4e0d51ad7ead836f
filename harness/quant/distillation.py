"""Teacher-student distances shared by the methods that train a quantized student against its FP teacher
(PSAQ-ViT V2's student loop, the fine-tuning tuners; docs/methods.md, PSAQ-ViT V2 and Fine-tuning).

Classifiers are compared by the KL divergence of their softened outputs, backbones (detection and
segmentation tasks quantize the backbone alone) by the MSE of their features.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Discrepancy = Literal["auto", "kl", "mse"]
DISCREPANCIES = ("auto", "kl", "mse")


def has_classifier(model: nn.Module) -> bool:
    """A timm classifier has a Linear head; a backbone (num_classes=0, mmdet/mmseg) has none."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return isinstance(head, nn.Linear) and head.out_features > 0


def resolve_discrepancy(choice: Discrepancy, teacher: nn.Module) -> Literal["kl", "mse"]:
    """KL of softened outputs for classifiers, a feature distance (MSE) for backbones."""
    if choice != "auto":
        return choice
    return "kl" if has_classifier(teacher) else "mse"


def _tensors(output: Any) -> list[Tensor]:
    """A backbone may return one feature map or several (multi-scale tuples, dicts)."""
    if isinstance(output, Tensor):
        return [output]
    values = output.values() if isinstance(output, dict) else output
    return [tensor for value in values for tensor in _tensors(value)]


def discrepancy(teacher_output: Any, student_output: Any, kind: Literal["kl", "mse"], temperature: float) -> Tensor:
    """D(f(x), q(x)): KL(softmax(f/T) ‖ softmax(q/T))·T² per image (Hinton's scaling), or the MSE of features."""
    if kind == "kl":
        return F.kl_div(F.log_softmax(student_output / temperature, dim=-1),
                        F.log_softmax(teacher_output / temperature, dim=-1),
                        reduction="batchmean", log_target=True) * temperature ** 2
    return sum(F.mse_loss(s, t) for t, s in zip(_tensors(teacher_output), _tensors(student_output)))


@torch.no_grad()
def mean_discrepancy(teacher: nn.Module, student: nn.Module, images: Tensor, kind: Literal["kl", "mse"],
                     temperature: float, batch_size: int) -> float:
    """D over the whole set, batch by batch, weighted by batch size: the number a record reports."""
    total = 0.0
    for chunk in images.split(batch_size):
        total += discrepancy(teacher(chunk), student(chunk), kind, temperature).item() * len(chunk)
    return total / len(images)
