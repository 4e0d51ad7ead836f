"""Pixel-synthesis building blocks: learning-rate schedule, jitter, clamp and total variation.

docs/methods.md, PSAQ-ViT, steps 3-6. The forms are the reference code's (which takes them from
DeepInversion); SPDFQ's generator uses the same pieces.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.model.arch import is_window_attention
from harness.model.fused import FusedKernels
from harness.plugin.task import ImagePrior

REFERENCE_TV_SHAPE = (32, 3, 224, 224)  # the batch for which the reference draws v ~ U(2500, 3000)
TV_SCALINGS = ("sqrt", "linear")
LR_VIT, LR_SWIN = 0.20, 0.25  # step 3


def synthesis_lr(model: nn.Module) -> float:
    """PSAQ-ViT's Adam learning rate for image synthesis: 0.25 for Swin, 0.20 for ViT/DeiT (step 3)."""
    return LR_SWIN if any(is_window_attention(module) for module in model.modules()) else LR_VIT


def warmup_cosine_lr(iteration: int, base_lr: float, round_length: int, warmup: int) -> float:
    """Learning rate at ``iteration`` (counted over all rounds); the schedule restarts every round.

    Step 3, in the reference's form: with t the iteration within its round,
    base_lr·(t+1)/warmup while t < warmup, then base_lr·(1 + cos(π·(t-warmup)/(round_length-warmup)))/2,
    which would reach 0 at t = round_length.
    """
    t = iteration % round_length
    if t < warmup:
        return base_lr * (t + 1) / warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (round_length - warmup)))


def pixel_optimizer(images: Tensor, lr: float, betas: tuple[float, float], eps: float = 1e-8) -> torch.optim.Adam:
    """Adam over synthetic pixels (step 3), torch's fused form: the same update up to
    rounding, 2-3 ms a step on 32 x 3 x 224 x 224 where the loop form takes 9 ms."""
    return torch.optim.Adam([images], lr=lr, betas=betas, eps=eps, fused=True)


def random_roll_flip(images: Tensor, max_shift: int, flip_probability: float, generator: torch.Generator) -> Tensor:
    """Step 4: roll H and W by one offset drawn from [-max_shift, max_shift], then flip W with p.

    ``torch.roll`` wraps around, so on images smaller than the range (16 px digits with ±15/±30) the
    jitter is a cyclic translation by offset mod size, nearly uniform over all shifts: the paper's
    behaviour is kept rather than clipping the range to the image.
    """
    offset = int(torch.randint(-max_shift, max_shift + 1, (), generator=generator))
    flip = bool(torch.rand((), generator=generator) < flip_probability)
    rolled = torch.roll(images, shifts=(offset, offset), dims=(2, 3))
    return rolled.flip(3) if flip else rolled


def clamp_pixels(images: Tensor, prior: ImagePrior | tuple[Tensor, Tensor]) -> Tensor:
    """Step 6: clamp each channel to [(0 - mean_c)/std_c, (1 - mean_c)/std_c] of the model's own mean/std.

    A synthesis loop passes the bounds already on the images' device (:func:`pixel_bounds`): copying
    them there at every step would make the host wait for the device each time.
    """
    low, high = pixel_bounds(prior, images) if isinstance(prior, ImagePrior) else prior
    return torch.clamp(images, low, high)


def pixel_bounds(prior: ImagePrior, images: Tensor) -> tuple[Tensor, Tensor]:
    """The clamp bounds of step 6 on ``images``' device and dtype, (1, C, 1, 1) each."""
    low, high = prior.clamp_bounds()
    return low.to(images.device, images.dtype), high.to(images.device, images.dtype)


def total_variation(images: Tensor) -> Tensor:
    """Step 5, TV: the sum of the Frobenius norms (over the batch) of the horizontal, vertical and
    both diagonal pixel differences.

    Fused (:mod:`harness.model.fused`), forward and backward each one pass over the pixels: the backward
    recomputes the differences rather than keeping them. On 32 x 3 x 224 x 224, forward and backward
    took 82 ms eager, 16 ms with autograd's backward of the fused forward (which kept the four
    differences) and 9 ms with this one. A zero norm has gradient 0, as torch's norm has.
    """
    return _TotalVariation.apply(images)


def tv_loss(images: Tensor, target: float) -> Tensor:
    """Step 5's L_TV = |TV(x) - v|."""
    return (total_variation(images) - target).abs()


class _TotalVariation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, images: Tensor) -> Tensor:
        norms = _KERNELS.pick(_difference_norms)(images)
        ctx.save_for_backward(images, norms)
        return norms.sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        images, norms = ctx.saved_tensors
        scales = torch.where(norms > 0, grad / norms, 0.0)
        return _KERNELS.pick(_total_variation_gradient)(images, scales)


# the pixel pairs of each difference, as (rows, columns) of the first and the second pixel
_DIFFERENCE_PAIRS = (
    ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),  # horizontal
    ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),  # vertical
    ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))),  # anti-diagonal
    ((slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None))),  # diagonal
)


def _differences(images: Tensor) -> list[Tensor]:
    return [images[..., first[0], first[1]] - images[..., second[0], second[1]]
            for first, second in _DIFFERENCE_PAIRS]


def _difference_norms(images: Tensor) -> Tensor:
    return torch.stack([torch.linalg.vector_norm(difference) for difference in _differences(images)])


def _total_variation_gradient(images: Tensor, scales: Tensor) -> Tensor:
    # d||D||/dx = D/||D|| added at each pair's first pixel and subtracted at its second
    total = torch.zeros_like(images)
    for (first, second), difference, scale in zip(_DIFFERENCE_PAIRS, _differences(images), scales.unbind()):
        total = total + _placed(difference * scale, first) - _placed(difference * scale, second)
    return total


def _placed(values: Tensor, region: tuple[slice, slice]) -> Tensor:
    """``values`` zero-padded back to the image size at the (rows, columns) ``region`` they came from."""
    rows, columns = region
    return F.pad(values, (int(columns.start is not None), int(columns.stop is not None),
                          int(rows.start is not None), int(rows.stop is not None)))


_KERNELS = FusedKernels("total variation", probe=lambda: _exercise_kernels())


def _exercise_kernels() -> None:
    """Both fused kernels at a size that takes the vectorized and parallel loops (see harness.model.fused)."""
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    total_variation(images).backward()


def tv_target(shape: tuple[int, ...], generator: torch.Generator, low: float = 2500.0, high: float = 3000.0,
              scaling: Literal["sqrt", "linear"] = "sqrt") -> float:
    """Step 5: v ~ U(low, high), drawn for B = 32 RGB images at 224 px, scaled to a (B, C, H, W) batch.

    Step 5 says to scale v with the image size and say how. TV is a sum of Frobenius norms, which
    grow like the square root of the element count for images of the same smoothness, so the
    default scales by sqrt(B·C·H·W / (32·3·224·224)): on 32 digits (1 x 16 x 16) that gives ~113,
    the TV of 32 real digits (112.8), where the linear B·H·W reading gives ~15, a target 7x
    smoother than real digits that the 0.05·L_TV term then enforces over the PSE prior. Both are
    the reference's v at 32 x 3 x 224 x 224; ``scaling="linear"`` keeps the linear reading.
    """
    draw = low + (high - low) * float(torch.rand((), dtype=torch.float64, generator=generator))
    batch, channels, height, width = shape
    if scaling == "linear":
        return draw * batch * height * width / (REFERENCE_TV_SHAPE[0] * REFERENCE_TV_SHAPE[2] * REFERENCE_TV_SHAPE[3])
    return draw * math.sqrt(batch * channels * height * width / math.prod(REFERENCE_TV_SHAPE))
