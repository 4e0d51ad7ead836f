"""Pixel-synthesis building blocks: learning-rate schedule, jitter, clamp and total variation.

Spec methods.md, PSAQ-ViT steps 3-6. The forms are the reference code's (which takes them from
DeepInversion); SPDFQ's generator uses the same pieces.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from harness.arch import is_window_attention
from harness.task import ImagePrior

REFERENCE_TV_ELEMENTS = 32 * 224 * 224  # B·H·W for which the reference draws v ~ U(2500, 3000)
LR_VIT, LR_SWIN = 0.20, 0.25  # spec PSAQ-ViT step 3


def synthesis_lr(model: nn.Module) -> float:
    """PSAQ-ViT's Adam learning rate for image synthesis: 0.25 for Swin, 0.20 for ViT/DeiT (spec step 3)."""
    return LR_SWIN if any(is_window_attention(module) for module in model.modules()) else LR_VIT


def warmup_cosine_lr(iteration: int, base_lr: float, round_length: int, warmup: int) -> float:
    """Learning rate at ``iteration`` (counted over all rounds); the schedule restarts every round.

    Spec PSAQ-ViT step 3, in the reference's form: with t the iteration within its round,
    base_lr·(t+1)/warmup while t < warmup, then base_lr·(1 + cos(π·(t-warmup)/(round_length-warmup)))/2,
    which would reach 0 at t = round_length.
    """
    t = iteration % round_length
    if t < warmup:
        return base_lr * (t + 1) / warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (round_length - warmup)))


def random_roll_flip(images: Tensor, max_shift: int, flip_probability: float, generator: torch.Generator) -> Tensor:
    """Spec step 4: roll H and W by one offset drawn from [-max_shift, max_shift], then flip W with p.

    ``torch.roll`` wraps around, so on images smaller than the range (16 px digits with ±15/±30) the
    jitter is a cyclic translation by offset mod size, nearly uniform over all shifts: the spec's
    behaviour is kept rather than clipping the range to the image.
    """
    offset = int(torch.randint(-max_shift, max_shift + 1, (), generator=generator))
    flip = bool(torch.rand((), generator=generator) < flip_probability)
    rolled = torch.roll(images, shifts=(offset, offset), dims=(2, 3))
    return rolled.flip(3) if flip else rolled


def clamp_pixels(images: Tensor, prior: ImagePrior) -> Tensor:
    """Spec step 6: clamp each channel to [(0 - mean_c)/std_c, (1 - mean_c)/std_c] of the model's own mean/std."""
    low, high = (bound.to(images.device, images.dtype) for bound in prior.clamp_bounds())
    return torch.maximum(torch.minimum(images, high), low)


def total_variation(images: Tensor) -> Tensor:
    """Spec step 5, TV: the sum of the Frobenius norms (over the batch) of the horizontal, vertical and
    both diagonal pixel differences."""
    differences = (
        images[..., :, :-1] - images[..., :, 1:],
        images[..., :-1, :] - images[..., 1:, :],
        images[..., 1:, :-1] - images[..., :-1, 1:],
        images[..., :-1, :-1] - images[..., 1:, 1:],
    )
    return sum(torch.linalg.vector_norm(difference) for difference in differences)


def tv_target(batch_size: int, height: int, width: int, generator: torch.Generator,
              low: float = 2500.0, high: float = 3000.0) -> float:
    """Spec step 5: v ~ U(low, high) as drawn for B = 32 at 224 px, scaled by B·H·W / (32·224·224).

    The linear scaling is the spec's rule. A Frobenius norm grows like sqrt(B·C·H·W), so on small
    images the scaled target asks for smoother images than the reference's ratio would.
    """
    draw = low + (high - low) * float(torch.rand((), dtype=torch.float64, generator=generator))
    return draw * batch_size * height * width / REFERENCE_TV_ELEMENTS
