"""The attention prior of SPDFQ (docs/methods.md, SPDFQ, Attention priors alignment (APA)).

A trained ViT attends to a few object parts; noise makes it attend uniformly. APA draws, for every
head of the deeper half of the blocks, a random mixture of K Gaussians over the patch grid and pulls
the model's attention towards it with MSE. This module holds the sampler (a pure, seeded function),
the alignment loss and probes that capture the post-softmax ``attn`` point of
:mod:`harness.model.arch`'s instrumented attention.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from harness.priors.probes import Probe, attention_point_probes

ATTN = "attn"
NUM_MODES = 5  # docs/methods.md, SPDFQ, APA: a mixture of K = 5 Gaussians
WIDTH_RANGE = (0.05, 0.25)  # σ of each Gaussian as a fraction of the grid side (unpublished; our default)


def gaussian_mixture_priors(num_maps: int, grid: tuple[int, int], generator: torch.Generator,
                            num_modes: int = NUM_MODES,
                            width_range: tuple[float, float] = WIDTH_RANGE) -> tuple[Tensor, Tensor]:
    """``num_maps`` random attention priors over a (rows, cols) patch grid -> (maps (num_maps, rows·cols), centres).

    docs/methods.md, SPDFQ, APA: K Gaussians with random centres and random widths, each map normalized to sum to 1
    over the patches. Centres are distinct patches (drawn with replacement only when K exceeds the
    grid), returned as (num_maps, K, 2) (row, col); each Gaussian is isotropic with σ drawn from
    ``width_range`` times the grid side, and the K components are weighted equally.
    """
    rows, cols = grid
    cells = rows * cols
    if num_modes <= cells:
        flat = torch.stack([torch.randperm(cells, generator=generator)[:num_modes] for _ in range(num_maps)])
    else:
        flat = torch.randint(cells, (num_maps, num_modes), generator=generator)
    centres = torch.stack([flat // cols, flat % cols], dim=-1).float()
    low, high = width_range
    sigma = (low + (high - low) * torch.rand(num_maps, num_modes, generator=generator)) * max(rows, cols)
    positions = torch.cartesian_prod(torch.arange(rows).float(), torch.arange(cols).float())  # (cells, 2)
    distance = (positions.view(1, 1, cells, 2) - centres.unsqueeze(2)).square().sum(-1)  # (maps, K, cells)
    density = torch.exp(-distance / (2 * sigma.unsqueeze(-1).square())).sum(dim=1)
    return density / density.sum(dim=-1, keepdim=True), centres


def aligned_blocks(num_blocks: int) -> list[tuple[int, float]]:
    """(0-based index, weight l/L) of the blocks l >= L/2 with l counted from 1 (docs/methods.md, SPDFQ, APA), so the
    last block has weight 1 and a 4-block model aligns blocks 2, 3, 4 with weights 0.5, 0.75, 1."""
    return [(l - 1, l / num_blocks) for l in range(1, num_blocks + 1) if l >= num_blocks / 2]


def attention_alignment_loss(attentions: list[Tensor], priors: list[Tensor], weights: list[float]) -> Tensor:
    """L_APA = Σ_l w_l Σ_h MSE(A_{l,h}, prior_{l,h}); each A and prior is (maps, heads, patches),
    the MSE averaged over maps (images, or images x windows) and patches."""
    return sum(weight * (attention - prior).square().mean(dim=(0, 2)).sum()
               for attention, prior, weight in zip(attentions, priors, weights))


def patch_attention(attn: Tensor, prefix_tokens: int, query_average: bool) -> Tensor:
    """(maps, heads, N, N) post-softmax map -> (maps, heads, patches), what APA aligns (docs/methods.md, SPDFQ, APA).

    ViT/DeiT: the class token's row, patch columns only (``prefix_tokens`` class/register columns
    dropped, not renormalized). Swin (``query_average``): the window's attention averaged over queries.
    """
    if query_average:
        return attn.mean(dim=-2)
    return attn[:, :, 0, prefix_tokens:]


@contextlib.contextmanager
def attention_probes(model: nn.Module) -> Iterator[list[tuple[nn.Module, Probe]]]:
    """Instrument ``model`` and probe the post-softmax map of every attention module, in block order.

    Yields (attention module, probe) pairs; on exit the model is exactly as before (classes and
    points restored).
    """
    with attention_point_probes(model, ATTN) as pairs:
        yield pairs
