"""AdaLog's quantizers and the pieces of its Fast Progressive Combining Search (docs/methods.md, AdaLog).

The adaptive-logarithm quantizer codes a value in [0, s] as c = round(-log2(x / s) · r / q), c < 2^b, and
represents it by s · 2^(-c·q/r): a logarithm of base 2^(q/r) with r = 37 fixed and the integer q searched.
Hardware dequantizes through two tables indexed by the code: an integer exponent floor(c·q/r) (a shift)
and a mantissa 2^(-((c·q) mod r)/r) rounded to a multiple of 1/(2^(b+1) - 2). Post-GELU activations are
shifted by -min GELU first, and the shift is folded into the next Linear's bias.

The uniform quantizers the search fills are the core's asymmetric ones with the zero point added after
rounding (:func:`harness.quant.fake_quant.fake_quant_offset_after_round`); what is new here is how their
candidates are drawn (percentile ranges × integer zero points) and refined (:func:`progressive_search`).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import torch
from torch import nn

from harness.quant.search import PUBLISHED_QUANTILE_LIMIT, QuantileArithmetic, quantiles

ADALOG_R = 37.0  # the base's denominator (docs/methods.md, AdaLog)
GELU_SHIFT = 0.16997124254703522  # -min GELU(x): the post-GELU shift
BASE_CANDIDATES_FROM = 10  # q is searched from 10 upwards
TABLE_LENGTH = 120  # entries of the search's mantissa table (indices below r are used)
SMALLEST_INPUT = 1e-15  # the clamp below log2


@lru_cache(maxsize=None)
def dequantization_tables(base: int, bits: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(exponents, mantissas) per code c < 2^b: floor(c·q/r) and 2^(-((q·c) mod r)/r) rounded to multiples of
    1/(2^(b+1) - 2), each computed in double precision as the authors' table update does."""
    steps = 2 ** (bits + 1) - 2
    exponents = tuple(float(math.floor(c * base / ADALOG_R)) for c in range(2 ** bits))
    mantissas = tuple(round(2 ** (-((base * c) % ADALOG_R) / ADALOG_R) * steps) / steps for c in range(2 ** bits))
    return exponents, mantissas


def search_table(bits: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The search's mantissa table: 2^(-j/r) rounded, in ``dtype``, to multiples of 1/(2^(b+1) - 2) (the search
    divides by that step where the dequantization tables multiply: the two may differ in the last bit)."""
    step = 1.0 / (2 ** (bits + 1) - 2)
    table = torch.tensor([2 ** (-j / ADALOG_R) for j in range(TABLE_LENGTH)], dtype=dtype, device=device)
    return torch.round(table / step) * step


def fake_quant_adalog(x: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, shift: torch.Tensor,
                      bits: int) -> torch.Tensor:
    """x̂ = 2^(-exponent[c]) · mantissa[c] · s for c = round(-log2((x + shift) / s) · r / q) below 2^b, else 0.

    ``shift``: 0 for post-softmax maps; for post-GELU activations GELU's -minimum, which the calibrator folds
    into the next layer's bias, so the result is not shifted back.
    """
    exponents, mantissas = dequantization_tables(int(base.item()), bits)
    scaled = ((x + shift) / scale).clamp(min=SMALLEST_INPUT, max=1.0)
    codes = torch.round(-scaled.log2() * ADALOG_R / base.to(x.dtype))
    inside = codes < 2 ** bits
    index = codes.clamp(0, 2 ** bits - 1).long()
    exponent = torch.tensor(exponents, dtype=x.dtype, device=x.device)[index]
    mantissa = torch.tensor(mantissas, dtype=x.dtype, device=x.device)[index]
    return 2 ** (-exponent) * mantissa * scale * inside


def adalog_search_values(x: torch.Tensor, base: torch.Tensor, bits: int, table: torch.Tensor) -> torch.Tensor:
    """The search's quantization of a normalized ``x`` (x / s, in (0, 1]) for candidate bases (broadcast):
    2^(-floor(c·q/r)) · table[(c·q) mod r], 0 at codes of 2^b and above."""
    codes = torch.round(-x.log2() * ADALOG_R / base)
    beyond = codes >= 2 ** bits
    codes = codes.clamp_(0, 2 ** bits - 1)
    column = torch.remainder(codes * base, ADALOG_R).round_().long()
    values = (2 ** (-1 * torch.floor(codes * base / ADALOG_R))) * table[column]
    values[beyond] = 0
    return values


def set_adalog_params(quantizer: nn.Module, scale: torch.Tensor, base: int | torch.Tensor, shift: float = 0.0) -> None:
    """Make ``quantizer`` (an ``ActQuantizer``) an AdaLog quantizer with this scale, base numerator q and input
    shift, frozen. q lives in a buffer ``log_base`` (saved with the state dict); the shift in ``zero_point``."""
    like = quantizer.low
    base = torch.as_tensor(base).reshape(()).to(device=like.device, dtype=torch.int64)
    if "log_base" in quantizer._buffers:
        quantizer.log_base = base.clone()
    else:
        quantizer.register_buffer("log_base", base.clone())
    quantizer.kind = "adalog"
    quantizer.set_params(scale.reshape(()), torch.tensor(shift, dtype=like.dtype, device=like.device))


# --- candidates and the progressive search ---------------------------------------------------------------

def candidate_batch(candidates: int, memory: int, numel: int) -> int:
    """How many candidates one pass evaluates: the authors' rule, half the device's ``memory`` (bytes) over
    4 bytes per element over the pass's ``numel``, evened out over the passes."""
    per_pass = max(1, int(((memory // 2) / 4) // numel))
    return math.ceil(candidates / math.ceil(candidates / per_pass))


def _percentile_pairs(rows: torch.Tensor, arithmetic: QuantileArithmetic) -> tuple[torch.Tensor, torch.Tensor]:
    """(uppers, lowers), each (2, rows): the quantiles at 0.9 and 1 and at 1 - 0.9 and 0, the complements
    computed in the rows' dtype as the authors' ``1 - pct``."""
    pct = torch.tensor([0.9, 1.0], dtype=rows.dtype)
    bounds = quantiles(rows, [*pct.tolist(), *(1 - pct).tolist()], arithmetic)
    return bounds[:2], bounds[2:]


def uniform_candidates(uppers: torch.Tensor, lowers: torch.Tensor, bits: int, eq_n: int, zero_points: int,
                       dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales × integer zero points: ``eq_n / zero_points`` ranges from the 0.9-percentile range to the full one,
    each divided by 2^b - 1, for each of ``zero_points`` zero points centred on 2^(b-1). ``uppers`` / ``lowers``
    hold the two ranges' bounds along dimension 0 in the group shape; the candidate axis is ``dim`` (0 or -1)."""
    half = 2 ** (bits - 1)
    scales_per_point = int(eq_n / zero_points)
    delta_min, delta_max = uppers[0] - lowers[0], uppers[1] - lowers[1]
    line = torch.linspace(0, 1, steps=scales_per_point, dtype=uppers.dtype, device=uppers.device)
    points = torch.arange(int(half - zero_points / 2), int(half + zero_points / 2), device=uppers.device)
    if dim == 0:
        line = line.reshape(-1, *([1] * delta_min.dim()))
        scales = (delta_min + line * (delta_max - delta_min)).repeat(zero_points, *([1] * delta_min.dim()))
        shape = (-1, *([1] * delta_min.dim()))
        zps = points.repeat_interleave(scales_per_point).reshape(shape).to(uppers.dtype).expand_as(scales)
    else:
        scales = (delta_min[..., None] + line * (delta_max - delta_min)[..., None]).repeat(
            *([1] * delta_min.dim()), zero_points)
        zps = points.repeat_interleave(scales_per_point).to(uppers.dtype).expand_as(scales)
    return scales / (2 * half - 1), zps.contiguous()


def weight_candidates(rows: torch.Tensor, bits: int, eq_n: int, max_zero_points: int | None,
                      arithmetic: QuantileArithmetic) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel candidates, shape (candidates, rows, 1): min(max_zero_points, 2^(b-1)) zero points
    (Linear layers: 16; the patch embedding: no cap)."""
    half = 2 ** (bits - 1)
    zero_points = half if max_zero_points is None else min(max_zero_points, half)
    uppers, lowers = _percentile_pairs(rows, arithmetic)
    return uniform_candidates(uppers[..., None], lowers[..., None], bits, eq_n, zero_points, dim=0)


def tensor_percentiles(x: torch.Tensor, groups: int, arithmetic: QuantileArithmetic) -> tuple[torch.Tensor, torch.Tensor]:
    """(uppers, lowers), each (2, groups), of ``x`` viewed as ``groups`` rows. Where torch <= 2.13 refused rows
    above 2^24 values (``published``), each row is split in 2, 4, ... equal parts and their quantiles averaged,
    as the authors' fallback does; ``torch2.14`` keeps whole rows."""
    parts = 1
    while arithmetic == "published" and (x.numel() // groups // parts > PUBLISHED_QUANTILE_LIMIT
                                         or x.numel() % (groups * parts)):
        parts *= 2
        if groups * parts > x.numel():  # no power of two splits the rows small enough: theirs would not end
            raise ValueError(f"{x.numel()} values in {groups} rows: no split into 2^k equal parts of at most "
                             f"{PUBLISHED_QUANTILE_LIMIT} values (quantile='published'); use quantile='torch2.14'")
    rows = x.reshape(groups * parts, -1)
    uppers, lowers = _percentile_pairs(rows, arithmetic)
    return (uppers.reshape(2, groups, parts).mean(dim=-1), lowers.reshape(2, groups, parts).mean(dim=-1))


def positive_percentiles(x: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Nearest-rank percentiles of the positive values of ``x``: the value of rank ceil(n·q) - 1 among the n
    sorted positives (n counted in float32, as the authors' code counts), 0 if there are none."""
    positives = x[x > 0].sort().values
    if not positives.numel():
        return torch.zeros(len(qs), dtype=x.dtype, device=x.device)
    count = torch.tensor(float(positives.numel()), dtype=torch.float32, device=x.device)
    ranks = (count * torch.tensor(list(qs), dtype=x.dtype, device=x.device)).ceil().long().sub(1).clamp(min=0)
    return positives[ranks]


TopK = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def progressive_search(scales: torch.Tensor, zero_points: torch.Tensor, top: TopK, eq_n: int, width: int, steps: int,
                       dim: int, floor: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast Progressive Combining Search: keep the ``width`` best (scale, partner) pairs of the candidates, put
    eq_n / width scales around each, spaced by the grid's step (halved, then divided by eq_n / width - 1/2
    at each of ``steps`` - 1 refinements), keep the best again; the best pair of the last step is returned.

    ``top(scales, partners, k)`` returns the gather index of the k best along the candidate axis ``dim`` (0 or
    -1); ``zero_points`` is the partner carried along (a zero point, or a log base). ``floor`` clamps the
    refined scales from below (the authors' Linear-input searches: 1e-4).
    """
    fresh = int(eq_n / width)
    delta = scales.narrow(dim, 1, 1) - scales.narrow(dim, 0, 1)
    index = top(scales, zero_points, width)
    best_scales, best_partners = scales.gather(dim, index), zero_points.gather(dim, index)
    for remaining in range(steps - 1, 0, -1):
        line = torch.linspace(0, 1, steps=fresh, dtype=scales.dtype, device=scales.device)
        line = line.reshape(-1, *([1] * (scales.dim() - 1))) if dim == 0 else line.reshape(*([1] * (scales.dim() - 1)), -1)
        offsets = (line - 0.5) * delta
        delta = delta / (fresh - 0.5)
        if dim == 0:
            scales = (best_scales.unsqueeze(1) + offsets.unsqueeze(0)).reshape(-1, *scales.shape[1:])
        else:
            scales = (best_scales.unsqueeze(-1) + offsets.unsqueeze(-2)).reshape(*scales.shape[:-1], -1)
        if floor is not None:
            scales = scales.clamp(min=floor)
        zero_points = best_partners.repeat_interleave(fresh, dim=dim)
        index = top(scales, zero_points, 1 if remaining == 1 else width)
        best_scales, best_partners = scales.gather(dim, index), zero_points.gather(dim, index)
    return best_scales, best_partners
