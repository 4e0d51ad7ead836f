"""Quantize-dequantize arithmetic of the quantizer (docs/quantizer.md, Arithmetic).

Rounding uses a straight-through estimator so the same functions serve learnable scales
(PSAQ-ViT V2's student, block reconstruction) and plain calibrated evaluation.
"""
from __future__ import annotations

import math

import torch

from harness.fused import FusedKernels


# The smallest scale a quantizer uses, float32's machine epsilon as in PSAQ-ViT's code (docs/quantizer.md,
# Arithmetic); learned scales are projected back to it.
MIN_SCALE = torch.finfo(torch.float32).eps


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (x.round() - x).detach() + x


def symmetric_weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale max|w_c| / (2^(b-1) - 0.5), as in PSAQ-ViT's code (docs/quantizer.md, Arithmetic)."""
    max_abs = weight.detach().flatten(1).abs().amax(dim=1)
    scale = max_abs / (2 ** (bits - 1) - 0.5)
    return scale.clamp_min(MIN_SCALE).view(-1, *([1] * (weight.dim() - 1)))


def fake_quant_symmetric(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers clamped to [-2^(b-1), 2^(b-1) - 1], then scaled back."""
    q = torch.clamp(round_ste(weight / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return q * scale


def asymmetric_params(low: torch.Tensor, high: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (max - min) / (2^b - 1) and zero-point round(-min / scale) in [0, 2^b - 1] (docs/quantizer.md, Arithmetic)."""
    levels = 2 ** bits - 1
    scale = ((high - low) / levels).clamp_min(MIN_SCALE)
    zero_point = torch.clamp(torch.round(-low / scale), 0, levels)
    return scale, zero_point


def fake_quant_asymmetric(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """q = clamp(round(x / s + z), 0, 2^b - 1), x_hat = (q - z) s, in exactly this order of float operations.

    The order is PSAQ-ViT's (docs/quantizer.md, Arithmetic): ``round(x / s) + z`` or ``x * (1 / s)``
    are the same in exact arithmetic but one step apart in float32 on a few elements in 10^5. ``s``
    stays a tensor on ``x``'s device, since a division by a Python scalar may run as a multiplication
    by its reciprocal. Without gradients activation fake quantization is memory-bound: a per-tensor
    quantizer runs as one fused pass over ``x`` (:func:`_quantize_values`), other shapes of scale
    (an observer's candidate ranges) as six passes in place on one buffer.
    """
    levels = 2 ** bits - 1
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
        return (torch.clamp(round_ste(x / scale + zero_point), 0, levels) - zero_point) * scale
    rows = _as_rows(x) if scale.dim() == zero_point.dim() == 0 and x.numel() else None
    if rows is None:
        return _quantize_values(x, scale, zero_point, levels)
    matrix, shape, order = rows
    with torch.no_grad():  # one compiled variant whatever the caller's grad mode (nothing here needs gradients)
        quantized = _KERNELS.pick(_quantize_values)(matrix, scale, zero_point, levels)
    return quantized.view(shape).permute(order)


def _quantize_values(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, levels: int) -> torch.Tensor:
    # the operations of docs/quantizer.md, Arithmetic, step 4, in order; compiled, the same
    # operations in one loop, so every bit is the eager result's (checked exactly on first use)
    return x.div(scale).add_(zero_point).round_().clamp_(0, levels).sub_(zero_point).mul_(scale)


def _as_rows(x: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]] | None:
    """``x``'s elements as a (rows, columns) matrix with unit column stride, so that a few compiled
    variants serve every tensor: a contiguous tensor, or a slice such as attention's q, k or v (heads x
    head dim contiguous, one row per token, rows a fixed pitch apart). Also the shape of the dense result
    in ``x``'s memory order and the permutation back to ``x``'s dimensions: the layout eager torch gives
    an elementwise result. None when the elements do not fall into such rows (eager torch then).
    """
    order = sorted(range(x.dim()), key=lambda d: (-x.stride(d), d))
    sizes = [(x.shape[d], x.stride(d)) for d in order if x.shape[d] > 1]
    columns = 1
    while sizes and sizes[-1][1] == columns:  # the contiguous trailing block
        columns *= sizes.pop()[0]
    if any(stride != next_stride * next_size for (_, stride), (next_size, next_stride) in zip(sizes, sizes[1:])):
        return None  # the rows are not evenly spaced
    if not sizes and x.dim():  # contiguous: rows of the last dimension, as a matmul input has
        columns = x.shape[-1]
    pitch = sizes[-1][1] if sizes else columns
    if pitch < columns:
        return None  # overlapping (expanded) elements
    # a tensor over x's memory with no view or autograd link to x: the compiler then guards on this
    # layout alone, not on whatever x was sliced from
    matrix = torch.empty(0, dtype=x.dtype, device=x.device).set_(
        x.untyped_storage(), x.storage_offset(), (x.numel() // columns, columns), (pitch, 1))
    return matrix, [x.shape[d] for d in order], [order.index(d) for d in range(x.dim())]


def _exercise_kernels() -> None:
    """The fused quantizer at sizes that take the vectorized and parallel loops, on a contiguous and on a
    permuted input (a view of attention's q, k or v), in float32 and float64."""
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        values = torch.randn(4, 65, 3, 2, 32, generator=generator, dtype=dtype) * 3
        scale, zero_point = asymmetric_params(values.amin(), values.amax(), 8)
        for x in (values, values.permute(2, 0, 3, 1, 4)[0]):
            with torch.no_grad():
                fake_quant_asymmetric(x, scale, zero_point, 8)


_KERNELS = FusedKernels("the activation quantizer", probe=lambda: _exercise_kernels(), tolerance=0.0)


def fake_quant_log2(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Log2 quantizer for post-softmax maps in [0, 1]: x ~ 2^-q, q in [0, 2^b - 1]; the last level is 0."""
    levels = 2 ** bits - 1
    q = torch.clamp(round_ste(-torch.log2(x.clamp_min(1e-30))), 0, levels)
    return torch.where(q >= levels, torch.zeros_like(x), torch.pow(2.0, -q))


def fake_quant_offset_after_round(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                                  bits: int) -> torch.Tensor:
    """q = clamp(round(x / s) + z, 0, 2^b - 1), x_hat = (q - z) s: the zero point added after rounding.

    The arithmetic of quantizers calibrated by a parameter search (docs/quantizer.md, Searched
    quantizers): ``z`` may be fractional (a per-tensor zero point averaged over channels) or
    out of [0, 2^b - 1], and ``s`` / ``z`` may be per channel, broadcast against ``x``.
    """
    levels = 2 ** bits - 1
    return (torch.clamp(torch.round(x / scale) + zero_point, 0, levels) - zero_point) * scale


def fake_quant_log_sqrt2(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Log-√2 quantizer for post-softmax maps: x ~ s · 2^(-q/2), q in [0, 2^b - 1]; beyond the last level, 0.

    Half-octave levels resolve the large attention weights better than log2's octaves
    (docs/quantizer.md, Searched quantizers). The odd levels' factor √2 is formed as
    (q mod 2)(√2 - 1) + 1 in the tensor's dtype, so it rounds the same way wherever it runs.
    """
    levels = 2 ** bits
    q = torch.round((x / scale).log2() * -2)
    beyond = q >= levels
    q = torch.clamp(q, 0, levels - 1)
    odd_factor = (q % 2) * (math.sqrt(2) - 1) + 1
    x_hat = torch.pow(2, -torch.ceil(q / 2)) * odd_factor * scale
    return x_hat.masked_fill(beyond, 0.0)
