"""The per-layer objective of ranking-loss PTQ (docs/methods.md, Ranking-loss PTQ): Γ − γ·L_rank."""
from __future__ import annotations

import torch


def pearson(reference: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Pearson correlation Γ(O, Ô) of the FP output with each of K quantized outputs, shape (K,).

    Sums run in float64: neighbouring candidates differ in the fourth decimal or later.
    """
    o = reference.flatten().double()
    o = o - o.mean()
    o_hat = candidates.flatten(1).double()
    o_hat = o_hat - o_hat.mean(dim=1, keepdim=True)
    norms = o.norm() * o_hat.norm(dim=1)
    return (o_hat @ o / norms.clamp_min(1e-30)).float()


def element_pairs(num_elements: int, max_pairs: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j), i < j, of one head's flattened attention map.

    Every pair when there are at most ``max_pairs`` of them, else a fixed uniform sample (the full
    Σ_{i<j} has (N²)² / 2 terms, 7·10⁸ per head for a 197-token ViT).
    """
    if num_elements * (num_elements - 1) // 2 <= max_pairs:
        return torch.triu_indices(num_elements, num_elements, offset=1).unbind(0)
    first = torch.randint(num_elements, (max_pairs,), generator=generator)
    second = torch.randint(num_elements - 1, (max_pairs,), generator=generator)
    second = second + (second >= first).long()  # uniform over j != i
    return torch.minimum(first, second), torch.maximum(first, second)


def ranking_loss(reference: torch.Tensor, candidates: torch.Tensor, theta: float,
                 pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """L_rank = Σ_heads Σ_{i<j} max(θ − (Â_i − Â_j)·sign(A_i − A_j), 0), averaged over the compared pairs.

    ``reference``: FP attention maps (..., M) with the M = N² elements of each head's map last;
    ``candidates``: (K, ..., M). Returns shape (K,). Pairs tied in FP carry no order and are left
    out; dividing by the pair count keeps γ independent of images, tokens and sampled pairs.
    Elements are moved to the first axis so the pair gathers copy whole rows (5x faster on CPU).
    """
    first, second = pairs
    num_candidates, num_elements = candidates.shape[0], candidates.shape[-1]
    reference = reference.reshape(-1, num_elements).t()
    candidates = candidates.reshape(num_candidates, -1, num_elements).permute(2, 0, 1).contiguous()
    order = torch.sign(reference[first] - reference[second]).unsqueeze(1)
    margin = (candidates[first] - candidates[second]).mul_(order)
    hinge = torch.relu_(margin.neg_().add_(theta)).mul_(order != 0)
    return hinge.sum(dim=(0, 2)) / (order != 0).sum().clamp_min(1)
