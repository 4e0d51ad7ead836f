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
from torch.utils.checkpoint import checkpoint

from harness.priors.probes import Probe, attention_point_probes

ATTN_V = "attn_v"
BANDWIDTH = 0.01  # spec step 5: KDE bandwidth
NUM_POINTS = 10  # spec step 5: evaluation points between the batch's min and max similarity
ENTROPY_OFFSET = 1e-4  # spec step 5: -(p + 1e-4) log(p + 1e-4)
KERNEL_ELEMENTS = 1 << 22  # largest (images x points x similarities) kernel block evaluated at once


@contextlib.contextmanager
def attn_v_probes(model: nn.Module) -> Iterator[list[Probe]]:
    """Instrument ``model`` and probe the attn·v product of every attention module, in block order."""
    with attention_point_probes(model, ATTN_V) as pairs:
        yield [probe for _, probe in pairs]


def patch_similarities(attn_v: Tensor, batch_size: int) -> Tensor:
    """(B·nW, heads, n, d) attn·v outputs -> (B, nW·(n-1)²) cosine similarities, pooled per image.

    Spec step 5: heads averaged, the first token of every window dropped (ViT/DeiT: nW = 1 and it is
    the class token; Swin: the first token of each window, as the spec and the reference do), all
    pairs of rows compared (diagonal included), and the windows of an image pooled into one sample
    (timm's window partition is image-major).
    """
    tokens = F.normalize(attn_v.mean(dim=1)[:, 1:, :], dim=-1, eps=1e-8)
    return (tokens @ tokens.transpose(1, 2)).reshape(batch_size, -1)


def gaussian_kde(samples: Tensor, points: Tensor, bandwidth: float = BANDWIDTH) -> Tensor:
    """Density of each row of ``samples`` (B, M) at ``points`` (K,): p(x) = mean_i N(x; s_i, h²) -> (B, K).

    The (B, K, M) kernel is evaluated in blocks of at most ``KERNEL_ELEMENTS`` under activation
    checkpointing, so memory stays bounded however many similarities an image has (Swin at 224 px:
    64 windows x 48² per image).
    """
    chunk = max(1, KERNEL_ELEMENTS // (samples.shape[0] * points.numel()))
    blocks = samples.split(chunk, dim=1)
    if len(blocks) == 1:
        kernel_sum = _kernel_sum(samples, points, bandwidth)
    else:
        kernel_sum = sum(checkpoint(_kernel_sum, block, points, bandwidth, use_reentrant=False) for block in blocks)
    return kernel_sum / (samples.shape[1] * bandwidth * math.sqrt(2 * math.pi))


def _kernel_sum(samples: Tensor, points: Tensor, bandwidth: float) -> Tensor:
    """Σ_i exp(-(x_k - s_i)² / 2h²) for every row and point -> (B, K)."""
    distances = points.view(1, -1, 1) - samples.unsqueeze(1)
    return torch.exp(-distances.square() / (2 * bandwidth ** 2)).sum(dim=-1)


def differential_entropy(density: Tensor, points: Tensor, offset: float = ENTROPY_OFFSET) -> Tensor:
    """Spec step 5: trapezoid integral over ``points`` of -(p + offset) log(p + offset), per row."""
    shifted = density + offset
    return torch.trapezoid(-shifted * shifted.log(), points, dim=-1)


def patch_similarity_entropy(attn_v: Tensor, batch_size: int, bandwidth: float = BANDWIDTH,
                             num_points: int = NUM_POINTS, offset: float = ENTROPY_OFFSET) -> Tensor:
    """H_b of every image for one block -> (B,); one batched computation over all images.

    Spec step 5: the KDE is evaluated at ``num_points`` points evenly spaced between the min and max
    similarity of the whole batch; these limits are constants (detached).
    """
    similarities = patch_similarities(attn_v, batch_size)
    low, high = similarities.detach().aminmax()
    steps = torch.linspace(0, 1, num_points, device=similarities.device, dtype=similarities.dtype)
    points = low + (high - low) * steps
    return differential_entropy(gaussian_kde(similarities, points, bandwidth), points, offset)


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
