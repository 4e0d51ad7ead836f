"""The patch-similarity prior of PSAQ-ViT (spec methods.md, PSAQ-ViT step 5, L_PSE).

A trained ViT answers real images with diverse attention outputs across patches; noise gives
near-uniform similarities. The differential entropy of each image's pairwise patch similarities,
estimated with a Gaussian KDE, measures that diversity, and synthesis maximizes it. The attn·v
products are captured with probes at the ``attn_v`` point of :mod:`harness.arch`'s instrumented
attention (per window for Swin).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.fused import FusedKernels
from harness.priors.probes import Probe, attention_point_probes

ATTN_V = "attn_v"
BANDWIDTH = 0.01  # spec step 5: KDE bandwidth
NUM_POINTS = 10  # spec step 5: evaluation points between the batch's min and max similarity
ENTROPY_OFFSET = 1e-4  # spec step 5: -(p + 1e-4) log(p + 1e-4)
NEGLIGIBLE_EXPONENT = -50.0  # kernel terms below e^-50 are dropped (see _kernel)
KERNEL_ELEMENTS = 1 << 22  # largest (images x points x similarities) kernel block evaluated at once


@contextlib.contextmanager
def attn_v_probes(model: nn.Module) -> Iterator[list[Probe]]:
    """Instrument ``model`` and probe the attn·v product of every attention module, in block order."""
    with attention_point_probes(model, ATTN_V) as pairs:
        yield [probe for _, probe in pairs]


def patch_similarities(attn_v: Tensor, batch_size: int) -> Tensor:
    """(B·nW, heads, n, d) attn·v outputs -> (B, nW·(n-1)²) cosine similarities, pooled per image.

    The windows of an image are pooled into one sample (timm's window partition is image-major).
    """
    return similarity_matrices(attn_v).reshape(batch_size, -1)


def similarity_matrices(attn_v: Tensor) -> Tensor:
    """(B·nW, heads, n, d) attn·v outputs -> (B·nW, n-1, n-1) cosine similarities of every window.

    Spec step 5: heads averaged, the first token of every window dropped (ViT/DeiT: nW = 1 and it is
    the class token; Swin: the first token of each window, as the spec and the reference do), all
    pairs of rows compared (diagonal included).
    """
    tokens = F.normalize(attn_v.mean(dim=1)[:, 1:, :], dim=-1, eps=1e-8)
    return tokens @ tokens.transpose(1, 2)


def gaussian_kde(samples: Tensor, points: Tensor, bandwidth: float = BANDWIDTH) -> Tensor:
    """Density of each row of ``samples`` (B, M) at ``points`` (K,): p(x) = mean_i N(x; s_i, h²) -> (B, K)."""
    return kernel_sum(samples, points, bandwidth) / (samples.shape[1] * bandwidth * math.sqrt(2 * math.pi))


def kernel_sum(samples: Tensor, points: Tensor, bandwidth: float) -> Tensor:
    """Σ_i exp(-(x_k - s_i)² / 2h²) for every row of ``samples`` (B, M) and every point -> (B, K).

    The points are constants (spec step 5: detached limits). The (B, K, M) kernel is never stored:
    the fused kernels (:mod:`harness.fused`) stream it in one pass each for forward and backward;
    the eager fallback walks it in blocks of at most ``KERNEL_ELEMENTS`` (Swin at 224 px has 64
    windows x 48² similarities per image), the backward recomputing each block.
    """
    return _KernelSum.apply(samples, points.detach(), bandwidth)


class _KernelSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, samples: Tensor, points: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(samples, points)
        ctx.bandwidth = bandwidth
        sums = _KERNELS.pick(_kernel_sums)
        return sum(sums(block, points, -0.5 / bandwidth ** 2) for block in _blocks(samples, points))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        samples, points = ctx.saved_tensors
        gradients = _KERNELS.pick(_kernel_gradients)
        scale = -0.5 / ctx.bandwidth ** 2
        return torch.cat([gradients(block, points, grad.contiguous(), scale)
                          for block in _blocks(samples, points)], dim=1), None, None


def _blocks(samples: Tensor, points: Tensor) -> tuple[Tensor, ...]:
    if _KERNELS.enabled:
        return (samples,)  # the fused kernels never materialize the (B, K, M) block
    return samples.split(max(1, KERNEL_ELEMENTS // (samples.shape[0] * points.numel())), dim=1)


def _kernel(samples: Tensor, points: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """exp(scale·(x_k - s_i)²) and x_k - s_i, both (B, K, M); scale = -1/2h².

    Terms with an exponent below ``NEGLIGIBLE_EXPONENT`` are exact zeros. Their sum adds at most
    M·2e-22 to a kernel sum, under 1e-20 to the density, which float32 resolves to ~1e-11 beside its
    1e-4 offset, so values and gradients are unchanged (parity tests at 1e-5 and 1e-8); kept, they
    would cost time twice: torch's exp is ~10x slower on inputs that underflow, and their products
    with the incoming gradient are subnormal numbers, slow on x86 (the fused backward of DeiT-T's
    12 blocks took 574 ms with terms down to e^-80 kept, 61 ms with this cut).
    """
    distances = points.view(1, -1, 1) - samples.unsqueeze(1)
    exponents = distances.square().mul_(scale)
    negligible = exponents < NEGLIGIBLE_EXPONENT
    return exponents.clamp_(min=NEGLIGIBLE_EXPONENT).exp_().masked_fill_(negligible, 0.0), distances


def _kernel_sums(samples: Tensor, points: Tensor, scale: float) -> Tensor:
    return _kernel(samples, points, scale)[0].sum(dim=-1)


def _kernel_gradients(samples: Tensor, points: Tensor, grad: Tensor, scale: float) -> Tensor:
    # d/ds exp(-(x - s)² / 2h²) = exp(-(x - s)² / 2h²) · (x - s) / h², and 1/h² = -2·scale
    kernel, distances = _kernel(samples, points, scale)
    return (grad.unsqueeze(-1) * kernel * distances).sum(dim=1) * (-2 * scale)


_KERNELS = FusedKernels("the patch-similarity KDE")


def differential_entropy(density: Tensor, points: Tensor, offset: float = ENTROPY_OFFSET) -> Tensor:
    """Spec step 5: trapezoid integral over ``points`` of -(p + offset) log(p + offset), per row."""
    shifted = density + offset
    return torch.trapezoid(-shifted * shifted.log(), points, dim=-1)


def patch_similarity_entropy(attn_v: Tensor, batch_size: int, bandwidth: float = BANDWIDTH,
                             num_points: int = NUM_POINTS, offset: float = ENTROPY_OFFSET) -> Tensor:
    """H_b of every image for one block -> (B,); one batched computation over all images.

    Spec step 5: the KDE of all (n-1)² similarities of a window, diagonal included, evaluated at
    ``num_points`` points evenly spaced between the min and max similarity of the whole batch; these
    limits are constants (detached). The similarity matrix is symmetric, so the kernel is evaluated
    on its strict upper triangle, counted twice, plus its diagonal: the same sum at half the cost.
    """
    similarities = similarity_matrices(attn_v)
    rows, columns = torch.triu_indices(*similarities.shape[-2:], offset=1, device=similarities.device)
    upper = similarities[:, rows, columns].reshape(batch_size, -1)
    diagonal = similarities.diagonal(dim1=1, dim2=2).reshape(batch_size, -1).contiguous()  # one kernel layout
    extremes = [part.detach().aminmax() for part in (upper, diagonal) if part.numel()]  # one window token: no upper
    low, high = min(least for least, _ in extremes), max(most for _, most in extremes)
    steps = torch.linspace(0, 1, num_points, device=similarities.device, dtype=similarities.dtype)
    points = low + (high - low) * steps
    kernel = 2 * kernel_sum(upper, points, bandwidth) + kernel_sum(diagonal, points, bandwidth)
    density = kernel / ((2 * upper.shape[1] + diagonal.shape[1]) * bandwidth * math.sqrt(2 * math.pi))
    return differential_entropy(density, points, offset)


def patch_similarity_loss(attn_v_outputs: Iterable[Tensor], batch_size: int, bandwidth: float = BANDWIDTH,
                          num_points: int = NUM_POINTS, offset: float = ENTROPY_OFFSET) -> Tensor:
    """L_PSE = -Σ_l mean_b H_{l,b} (spec step 5: the entropy is maximized)."""
    return -sum(patch_similarity_entropy(attn_v, batch_size, bandwidth, num_points, offset).mean()
                for attn_v in attn_v_outputs)


@torch.no_grad()
def block_entropies(model: nn.Module, images: Tensor) -> list[float]:
    """Mean patch-similarity entropy of ``images`` at every block (a diagnostic: synthetic vs noise vs real).

    The KDE points span this batch's similarities, so compare values of batches of the same size.
    """
    with attn_v_probes(model) as probes:
        model(images)
        return [patch_similarity_entropy(probe.value, images.shape[0]).mean().item() for probe in probes]
