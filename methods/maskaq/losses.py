"""MaskAQ's loss terms (docs/methods.md, MaskAQ): the generator's, on raw attention logits q·kᵀ of shape
(B, heads, N, N) per block, and the fine-tuning's head-output distance on attn·v of shape (B, heads, N, d).

``prefix`` is the number of leading non-patch tokens (the class token: 1). The authors' code slices tokens
1:197 and folds them into 14 x 14 maps; every SSIM here is global (means over the whole map), so the fold
changes nothing and the terms are written for the model's own patch count.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # SSIM's constants for a dynamic range of 1
NORMALIZE_EPS = 1e-8  # min-max normalization of a logit row: (x - min) / (max + 1e-8)
MASK_EPS = 1e-8  # the masked L1's denominator
UNIT_EPS, VARIANCE_EPS = 1e-6, 1e-8  # the similarity entropy's row normalization and variance floor
HEAD_EPS = 1e-6  # the head-output distance's weights and denominators


def head_similarity(logits: list[Tensor], prefix: int) -> Tensor:
    """Inter-head SSIM loss (MimiQ's, used by MaskAQ's generator): mean over blocks, images, query patches and
    ordered head pairs (self-pairs included) of 1 - SSIM², SSIM global over each row's patch columns after a
    min-max normalization of the row."""
    stack = torch.stack(logits)[:, :, :, prefix:, prefix:]  # (L, B, H, P, P)
    layers, batch, heads, rows, columns = stack.shape
    rows_by_head = stack.permute(0, 1, 3, 2, 4).reshape(layers, batch * rows, heads, columns)
    shifted = rows_by_head - rows_by_head.min(-1, keepdim=True)[0]
    maps = shifted / (shifted.max(-1, keepdim=True)[0] + NORMALIZE_EPS)
    mu = maps.mean(-1)
    mu_pairs = mu.unsqueeze(2) * mu.unsqueeze(3)
    mu_sq = mu.pow(2)
    sigma_sq = (maps * maps).mean(-1) - mu_sq
    sigma_pairs = maps @ maps.transpose(-1, -2) / columns - mu_pairs
    ssim = ((2 * mu_pairs + SSIM_C1) * (2 * sigma_pairs + SSIM_C2)) / (
        (mu_sq.unsqueeze(2) + mu_sq.unsqueeze(3) + SSIM_C1) * (sigma_sq.unsqueeze(2) + sigma_sq.unsqueeze(3) + SSIM_C2))
    return (1 - ssim ** 2).mean()


def total_variation(images: Tensor) -> Tensor:
    """L2 norms (not squared) over the batch of the horizontal and vertical neighbour differences, plus
    those of both diagonals divided by √2."""
    horizontal = images[:, :, :, :-1] - images[:, :, :, 1:]
    vertical = images[:, :, :-1, :] - images[:, :, 1:, :]
    anti = images[:, :, 1:, :-1] - images[:, :, :-1, 1:]
    diagonal = images[:, :, :-1, :-1] - images[:, :, 1:, 1:]
    return (torch.norm(horizontal) + torch.norm(vertical) + torch.norm(anti) / np.sqrt(2)
            + torch.norm(diagonal) / np.sqrt(2))


def class_token_logits(logits: Tensor, prefix: int) -> Tensor:
    """(B, H, N, N) -> (B, P): the class token's row against the patches, heads averaged."""
    return logits.mean(1)[:, 0, prefix:]


def informative_mask(logits: list[Tensor], ratio: float, prefix: int) -> Tensor:
    """(B, P) 0/1: per image the top k = max(1, int(P·ratio)) patches of the class token's logits averaged over
    blocks and heads."""
    scores = class_token_logits(torch.stack(logits).mean(0), prefix).detach()
    k = max(1, int(scores.shape[1] * ratio))
    return torch.zeros_like(scores).scatter_(1, torch.topk(scores, k, dim=1).indices, 1.0)


def mask_ratio(iteration: int, iterations: int, start: float, end: float) -> float:
    """The mask's share of patches, decaying linearly from ``start`` to ``end`` over the iterations."""
    progress = iteration / iterations
    return max(start * (1 - progress) + end * progress, end)


def drop_tokens(mask: Tensor, drop: float, generator: torch.Generator | None, min_keep: int = 1) -> Tensor:
    """Per image keep a random max(``min_keep``, round(n·(1 - drop))) of the n selected patches (one
    ``randperm(n)`` per image that loses any, in image order)."""
    dropped = mask.clone()
    for row in dropped:
        selected = torch.nonzero(row > 0.5).squeeze(-1)
        count = selected.numel()
        keep = min(max(min_keep, int(round(count * (1.0 - drop)))), count)
        if count == 0 or keep == count:
            continue
        kept = selected[torch.randperm(count, generator=generator)[:keep]]
        row[selected] = 0.0
        row[kept] = 1.0
    return dropped


def masked_alignment(fp_logits: list[Tensor], quantized_logits: list[Tensor], mask: Tensor, prefix: int) -> Tensor:
    """Mean over blocks of Σ |f - q|·mask / (Σ mask + 1e-8), f and q the class token's logits (heads averaged),
    sums over the batch: the FP/quantized discrepancy on the informative patches, reduced by synthesis."""
    total = 0.0
    for fp, quantized in zip(fp_logits, quantized_logits):
        difference = torch.abs(class_token_logits(fp, prefix) - class_token_logits(quantized, prefix)) * mask
        total = total + difference.sum() / (mask.sum() + MASK_EPS)
    return total / len(fp_logits)


def entropy_rows(layers: int, batch: int, patches: int, count: int, generator: torch.Generator | None) -> Tensor | None:
    """(L, B, count) rows drawn without replacement per block and image (block-major), or None (all rows) when
    there are no more than ``count`` patches."""
    if patches <= count:
        return None
    return torch.stack([torch.stack([torch.randperm(patches, generator=generator)[:count] for _ in range(batch)])
                        for _ in range(layers)])


def similarity_entropy(logits: list[Tensor], rows: Tensor | None, prefix: int) -> Tensor:
    """-mean over blocks and images of the Gaussian entropy ½(log 2πe + log v), v the biased variance (+1e-8)
    of the cosine similarities between the (sampled) patch rows of the head-averaged patch-to-patch logits."""
    stack = torch.stack(logits).mean(2)[:, :, prefix:, prefix:]  # (L, B, P, P)
    if rows is not None:
        stack = torch.gather(stack, 2, rows.to(stack.device).unsqueeze(-1).expand(-1, -1, -1, stack.shape[-1]))
    units = F.normalize(stack, p=2, dim=-1, eps=UNIT_EPS)
    similarities = units @ units.transpose(-1, -2)
    variance = similarities.flatten(2).var(dim=-1, unbiased=False) + VARIANCE_EPS
    log_two_pi_e = torch.log(torch.tensor(2.0 * math.pi * math.e, dtype=stack.dtype, device=stack.device))
    return -(0.5 * (log_two_pi_e + torch.log(variance))).mean()


def head_output_distance(teacher: list[Tensor], student: list[Tensor], prefix: int, ratio: float = 0.1,
                         high: float = 2.0, low: float = 1.0) -> Tensor:
    """1 - mean of a weighted contrast-structure SSIM along the tokens, per block, image, head and channel of
    attn·v: weights ``high`` on each block's and image's top round(P·ratio) patches by the teacher's mean |attn·v|
    (heads averaged), ``low`` elsewhere; no luminance term."""
    t = torch.stack(teacher)[:, :, :, prefix:, :]  # (L, B, H, P, d)
    q = torch.stack(student)[:, :, :, prefix:, :]
    patches = t.shape[3]
    importance = t.detach().abs().mean(-1).mean(2)  # (L, B, P)
    k = max(1, int(round(patches * float(ratio))))
    mask = torch.ones_like(importance) if k >= patches else torch.zeros_like(importance).scatter_(
        -1, torch.topk(importance, k, dim=-1).indices, 1.0)
    weights = (mask * (high - low) + low)[:, :, None, :, None]  # over (L, B, H, P, d)
    padded = weights + HEAD_EPS
    total = padded.sum(3, keepdim=True)
    mean_t, mean_q = (t * padded).sum(3) / total.squeeze(3), (q * padded).sum(3) / total.squeeze(3)
    var_t = (t * t * padded).sum(3) / total.squeeze(3) - mean_t * mean_t
    var_q = (q * q * padded).sum(3) / total.squeeze(3) - mean_q * mean_q
    covariance = (t * q * weights).sum(3) / (weights.expand_as(t).sum(3) + HEAD_EPS) - mean_t * mean_q
    ssim = (2.0 * covariance + SSIM_C2) / ((var_t + var_q + SSIM_C2) + HEAD_EPS)
    return 1.0 - ssim.mean()


Drop = Callable[[Tensor], Tensor]
