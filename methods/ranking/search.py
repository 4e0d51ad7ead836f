"""Alternating linear grid search of one matmul's two scales (docs/methods.md, Ranking-loss PTQ).

A matmul has an input X and a second operand W (a layer's weight, or k in q·kᵀ and v in attn·v).
Each operand's scale is a multiplier α on its min-max scale Δ0, searched over the paper's grid
[0.5, 1.2]: first Δ_W with Δ_X fixed, then Δ_X with Δ_W fixed, for a few rounds. Candidates are
evaluated on cached FP tensors, vectorized over α in chunks bounded by :data:`CHUNK_ELEMENTS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from harness.api import progress_bar
from harness.api.quantizer import (ActQuantizer, asymmetric_params, fake_quant_asymmetric, fake_quant_log2,
                                   fake_quant_symmetric, symmetric_weight_scale)
from methods.ranking.objective import pearson, ranking_loss

MIN_GAIN = 1e-6  # a move must beat the current objective by more than float noise (Pearson of a rescaled output)
CHUNK_ELEMENTS = 1 << 24  # largest tensor of a candidate chunk (64 MiB; peak a few times that); memory only


def candidate_grid(low: float, high: float, num: int) -> torch.Tensor:
    """``num`` multipliers evenly spaced over [low, high], plus exactly 1.0 (the min-max scale).

    With 1.0 always a candidate and the current multiplier kept unless beaten, the search can
    never end worse than min-max by its own objective.
    """
    return torch.unique(torch.cat([torch.linspace(low, high, num), torch.ones(1)]))


@dataclass
class Operand:
    """One matmul input: its FP value on the calibration set and how a multiplier quantizes it.

    ``quantize`` maps multipliers (K,) to the K fake-quantized values stacked on a new first axis;
    ``commit`` writes the chosen multiplier into the model. Operands without a scale to search
    (floating point, or a log2 attention quantizer) have ``searchable = False``.
    """

    value: torch.Tensor
    quantize: Callable[[torch.Tensor], torch.Tensor]
    commit: Callable[[float], None]
    searchable: bool = True


def weight_operand(layer: nn.Module) -> Operand:
    """Δ_W: a multiplier on the per-channel min-max scales max|w_c| / (2^(b-1) - 0.5) (docs/quantizer.md, Arithmetic)."""
    weight, bits = layer.weight.detach(), layer.weight_bits
    if not bits:
        return _fixed(weight, lambda w: w)
    base = symmetric_weight_scale(weight, bits)

    def quantize(alphas: torch.Tensor) -> torch.Tensor:
        scales = alphas.view(-1, *[1] * weight.dim()).to(base) * base
        return fake_quant_symmetric(weight.unsqueeze(0), scales, bits)

    def commit(alpha: float) -> None:
        layer.weight_scale = base * alpha

    return Operand(weight, quantize, commit)


def activation_operand(quantizer: ActQuantizer | None, value: torch.Tensor) -> Operand:
    """Δ_X: a multiplier on the per-tensor min-max range [min(x, 0), max(x, 0)] (docs/quantizer.md, Arithmetic).

    Scaling the range scales the asymmetric quantizer's step by α; the zero-point follows.
    """
    if quantizer is None:
        return _fixed(value, lambda x: x)
    low, high = value.amin().clamp_max(0), value.amax().clamp_min(0)
    if quantizer.kind == "log2":
        return _fixed(value, lambda x: fake_quant_log2(x, quantizer.bits), lambda: quantizer.freeze(low, high))

    def quantize(alphas: torch.Tensor) -> torch.Tensor:
        alphas = alphas.to(value).view(-1, *[1] * value.dim())
        scale, zero_point = asymmetric_params(alphas * low, alphas * high, quantizer.bits)
        return fake_quant_asymmetric(value.unsqueeze(0), scale, zero_point, quantizer.bits)

    def commit(alpha: float) -> None:
        quantizer.freeze(low * alpha, high * alpha)

    return Operand(value, quantize, commit)


def _fixed(value: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor],
           freeze: Callable[[], None] = lambda: None) -> Operand:
    return Operand(value, lambda alphas: transform(value).unsqueeze(0).expand(len(alphas), *value.shape),
                   lambda alpha: freeze(), searchable=False)


@dataclass
class MatmulUnit:
    """One searched matmul: ``output = op(x, w)``.

    ``attention_map``: the FP post-softmax map (..., N, N) when the output is q·kᵀ, which adds the
    ranking loss; ``channel_dim``: the output's channel axis (bias correction).
    """

    name: str
    x: Operand
    w: Operand
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    attention_map: torch.Tensor | None = None
    channel_dim: int = -1


@dataclass
class SearchResult:
    """What the record shows per layer: the chosen multipliers and the objective before and after."""

    alpha_w: float
    alpha_x: float
    objective_minmax: float
    objective: float


@torch.no_grad()
def alternating_search(unit: MatmulUnit, grid: torch.Tensor, rounds: int, gamma: float, theta: float,
                       pairs: tuple[torch.Tensor, torch.Tensor] | None) -> SearchResult:
    """Maximize Γ(O, Ô) − γ·L_rank over (α_W, α_X), W first; the current α is kept unless beaten.

    Both start at 1.0 (min-max), so the result is never worse than min-max by this objective.
    """
    one = int((grid == 1.0).nonzero())
    index = {"w": one, "x": one}
    reference = unit.op(unit.x.value, unit.w.value)
    roles = [role for role in ("w", "x") if getattr(unit, role).searchable]
    minmax = current = None
    for _ in progress_bar(range(rounds), desc=unit.name, leave=False):
        moved = False
        for role in roles:
            other = "x" if role == "w" else "w"
            fixed = getattr(unit, other).quantize(grid[index[other]].view(1))[0]
            scores = _objective(unit, role, fixed, grid, reference, gamma, theta, pairs)
            minmax = float(scores[one]) if minmax is None else minmax
            best = int(scores.argmax())
            if scores[best] > scores[index[role]] + MIN_GAIN:
                index[role], moved = best, True
            current = float(scores[index[role]])
        if not moved:
            break
    return SearchResult(alpha_w=float(grid[index["w"]]), alpha_x=float(grid[index["x"]]),
                        objective_minmax=minmax, objective=current)


def _objective(unit: MatmulUnit, role: str, fixed: torch.Tensor, alphas: torch.Tensor, reference: torch.Tensor,
               gamma: float, theta: float, pairs: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Γ − γ·L_rank for each multiplier of ``role``'s operand, the other operand quantized as ``fixed``."""
    operand = getattr(unit, role)
    per_candidate = max(operand.value.numel(), reference.numel())
    if pairs is not None:  # the pair differences: one value per pair, head and image
        per_candidate = max(per_candidate, len(pairs[0]) * reference[..., 0, 0].numel())
    chunk = max(1, CHUNK_ELEMENTS // per_candidate)
    op = (lambda w: unit.op(fixed, w)) if role == "w" else (lambda x: unit.op(x, fixed))
    scores = []
    for start in range(0, len(alphas), chunk):
        outputs = torch.vmap(op)(operand.quantize(alphas[start:start + chunk]))
        score = pearson(reference, outputs)
        if pairs is not None and gamma:
            score = score - gamma * ranking_loss(*_attention_maps(unit.attention_map, reference, outputs),
                                                 theta, pairs)
        scores.append(score)
    return torch.cat(scores)


def _attention_maps(fp_map: torch.Tensor, scores: torch.Tensor,
                    quantized_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP and quantized attention maps, each head's map flattened to its N² elements.

    The quantized map is softmax(Ŝ − S + log A): whatever the model adds to q·kᵀ before the
    softmax (Swin's relative-position bias and shift mask) is recovered from the FP map A, since
    log A and S + bias differ by a per-row constant that the softmax ignores.
    """
    logits = quantized_scores - scores + fp_map.log()
    return fp_map.flatten(-2), logits.softmax(dim=-1).flatten(-2)


@torch.no_grad()
def bias_correction(unit: MatmulUnit, result: SearchResult) -> torch.Tensor:
    """E[Ô − O] per output channel over the calibration set, subtracted from the bias (docs/methods.md, Ranking-loss PTQ)."""
    x = unit.x.quantize(torch.tensor([result.alpha_x]))[0]
    w = unit.w.quantize(torch.tensor([result.alpha_w]))[0]
    error = unit.op(x, w) - unit.op(unit.x.value, unit.w.value)
    channel = unit.channel_dim % error.dim()
    return error.mean(dim=[d for d in range(error.dim()) if d != channel])
