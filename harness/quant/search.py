"""Quantizer parameters chosen by a search over percentile clipping ranges (docs/quantizer.md, Searched quantizers).

For each candidate percentile p the range [quantile(1 - p), quantile(p)] gives a scale and zero
point; the candidate with the smallest mean squared quantization error wins (the first one on a tie).
The search runs on rows: one row per output channel of a weight, per channel of an activation, or a
single row for a per-tensor quantizer.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

from harness.quant.fake_quant import MIN_SCALE, fake_quant_log_sqrt2, fake_quant_offset_after_round

# How a quantile is computed (docs/methods.md, RepQ-ViT, Quantiles): as torch.quantile computed it up to
# torch 2.13 ("published": q and its rank q·(n - 1) in the input's dtype; a row of more than 2^24 values,
# which those releases refused, through numpy's percentile rounded to float32, as the authors' fallback
# does), or as torch 2.14 computes it ("torch2.14": the rank in float64, no size limit). Both are
# computed here whatever torch is installed.
QuantileArithmetic = Literal["published", "torch2.14"]
QUANTILE_ARITHMETICS: tuple[str, ...] = ("published", "torch2.14")
PUBLISHED_QUANTILE_LIMIT = 1 << 24


def quantiles(rows: torch.Tensor, qs: Sequence[float], arithmetic: QuantileArithmetic = "published") -> torch.Tensor:
    """Per-row linear-interpolation quantiles of a (rows, values) tensor, shape (len(qs), rows), with
    torch.quantile's operations in its order (one sort for all of them; q cast to the input's dtype, as
    torch.quantile casts a scalar q) in the ``arithmetic`` of the torch release named above."""
    if arithmetic not in QUANTILE_ARITHMETICS:
        raise ValueError(f"unknown quantile arithmetic {arithmetic!r}; accepted: {', '.join(QUANTILE_ARITHMETICS)}")
    rows = rows.detach()
    count = rows.shape[1]
    if arithmetic == "published" and count > PUBLISHED_QUANTILE_LIMIT:
        values = np.percentile(rows.cpu().numpy(), [q * 100 for q in qs], axis=1)
        return torch.as_tensor(values, dtype=torch.float32).to(device=rows.device, dtype=rows.dtype)
    q = torch.tensor(list(qs), dtype=rows.dtype, device=rows.device)
    ranks = q * (count - 1) if arithmetic == "published" else q.double() * (count - 1)
    below = ranks.long()
    weights = (ranks - below).to(rows.dtype)
    above = ranks.ceil().long()
    ordered = rows.sort(dim=1).values
    result = torch.empty(len(qs), rows.shape[0], dtype=rows.dtype, device=rows.device)
    torch.lerp(ordered.index_select(1, below), ordered.index_select(1, above), weights, out=result.t())
    return result.masked_fill_(ordered[:, -1].isnan(), float("nan"))  # a NaN sorts last; torch.quantile's NaN rows


def percentile_mse_params(rows: torch.Tensor, bits: int, percentiles: Sequence[float],
                          arithmetic: QuantileArithmetic = "published") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row asymmetric scale and zero point, each row's best of the percentile candidates (their
    quantiles in ``arithmetic``, :func:`quantiles`).

    The zero point is round(-low / scale), neither widened to contain 0 nor clamped; quantization
    adds it after rounding (:func:`fake_quant_offset_after_round`).
    """
    rows = rows.detach()
    levels = 2 ** bits - 1
    best_error = best_scale = best_zero_point = None
    bounds = quantiles(rows, [*percentiles, *(1.0 - p for p in percentiles)], arithmetic)
    for high, low in zip(bounds[:len(percentiles)], bounds[len(percentiles):]):
        scale = ((high - low) / levels).clamp_min(MIN_SCALE)
        zero_point = (-low / scale).round()
        error = (fake_quant_offset_after_round(rows, scale[:, None], zero_point[:, None], bits) - rows).abs().pow(2)
        error = error.mean(dim=1)
        if best_error is None:
            best_error, best_scale, best_zero_point = error, scale, zero_point
            continue
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_scale = torch.where(better, scale, best_scale)
        best_zero_point = torch.where(better, zero_point, best_zero_point)
    return best_scale, best_zero_point


def percentile_mse_log_sqrt2_scale(x: torch.Tensor, bits: int, percentiles: Sequence[float],
                                   arithmetic: QuantileArithmetic = "published") -> torch.Tensor:
    """The log-√2 quantizer's scale (its largest level): the percentile of ``x`` with the smallest MSE
    (quantiles in ``arithmetic``, :func:`quantiles`)."""
    flat = x.detach().reshape(1, -1)
    best_error, best_scale = None, None
    for scale in quantiles(flat, percentiles, arithmetic)[:, 0]:
        error = (fake_quant_log_sqrt2(flat, scale, bits) - flat).abs().pow(2).mean()
        if best_error is None or error < best_error:
            best_error, best_scale = error, scale
    return best_scale


# Scale search by an output metric (docs/quantizer.md, Output-metric scale search): candidates are fractions
# of an initial scale; each is scored by how close the layer's output stays to its FP output.

def fraction_candidates(alpha: float, beta: float, count: int, like: torch.Tensor) -> torch.Tensor:
    """The fractions alpha + i (beta - alpha) / count, i = 0 .. count - 1, in ``like``'s dtype and device
    (each computed in Python's double precision first)."""
    return torch.tensor([alpha + i * (beta - alpha) / count for i in range(count)], dtype=like.dtype,
                        device=like.device)


def output_similarity(raw: torch.Tensor, quantized: torch.Tensor, metric: str,
                      grad: torch.Tensor | None = None) -> torch.Tensor:
    """Similarity of a quantized output to its FP output over the last dimension (higher is better).

    ``hessian``: -mean((g ⊙ (raw - quantized))²), g the gradient of the task loss with respect to the
    output, the diagonal-Hessian approximation of the loss increase; ``l2``: -mean((raw - quantized)²);
    ``cosine``: cosine similarity. Callers average over the remaining dimensions.
    """
    if metric == "cosine":
        return torch.nn.functional.cosine_similarity(raw, quantized, dim=-1)
    if metric == "hessian":
        if grad is None:
            raise ValueError("the hessian metric needs the gradient of the output")
        return (-(grad * (raw - quantized)) ** 2).mean(dim=-1)
    if metric == "l2":
        return (-(raw - quantized) ** 2).mean(dim=-1)
    raise ValueError(f"unknown metric {metric!r}; accepted: hessian, l2, cosine")


def best_candidate(scores: torch.Tensor) -> torch.Tensor:
    """Index of the best candidate along dimension 0 of a (candidates, ...) score tensor; the first on a tie."""
    return scores.argmax(dim=0)
