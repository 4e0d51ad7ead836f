"""Quantize-dequantize arithmetic of the quantizer (docs/quantizer.md, Arithmetic).

Rounding uses a straight-through estimator so the same functions serve learnable scales
(PSAQ-ViT V2's student, block reconstruction) and plain calibrated evaluation.
"""
from __future__ import annotations

import math

import torch

from harness.model.fused import FusedKernels


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
    (an observer's candidate ranges) as six passes in place on one buffer. The result is contiguous
    whatever ``x``'s layout: attention's q, k and v arrive as strided views of the qkv projection, and
    a contiguous result is what the attention matmuls read without copying it first.
    """
    levels = 2 ** bits - 1
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
        return (torch.clamp(round_ste(x / scale + zero_point), 0, levels) - zero_point) * scale
    if scale.dim() or zero_point.dim() or not x.numel():
        return _quantize_values(x, scale, zero_point, levels)
    with torch.no_grad():  # one compiled variant whatever the caller's grad mode (nothing here needs gradients)
        if x.is_contiguous():  # rows of the last dimension, as a matmul input has: one variant serves all
            columns = x.shape[-1] if x.dim() else 1
            matrix = _storage_view(x, (x.numel() // columns, columns), (columns, 1))
            return _KERNELS.pick(_quantize_values)(matrix, scale, zero_point, levels).view(x.shape)
        strided = _storage_view(x, tuple(x.shape), x.stride())
        return _KERNELS.pick(_quantize_to_contiguous)(strided, scale, zero_point, levels)


def _quantize_values(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, levels: int) -> torch.Tensor:
    # the operations of docs/quantizer.md, Arithmetic, step 4, in order; compiled, the same
    # operations in one loop, so every bit is the eager result's (checked exactly on first use)
    return x.div(scale).add_(zero_point).round_().clamp_(0, levels).sub_(zero_point).mul_(scale)


def fake_quant_asymmetric_(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`fake_quant_asymmetric` written over ``x`` itself (contiguous, per-tensor ``s`` and ``z``, no
    gradients): for a temporary nothing else reads, half the memory traffic of writing a new tensor."""
    with torch.no_grad():
        return _KERNELS.pick(_quantize_in_place)(x, scale, zero_point, 2 ** bits - 1)


def _quantize_in_place(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, levels: int) -> torch.Tensor:
    # compiled, one loop that reads each element and writes its quantized value back
    return x.copy_(_quantize_values(x, scale, zero_point, levels))


def _quantize_to_contiguous(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, levels: int) -> torch.Tensor:
    # compiled, one loop that reads x's strided elements and writes the contiguous result
    return _quantize_values(x, scale, zero_point, levels).contiguous()


def _storage_view(x: torch.Tensor, shape: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """``x``'s memory with this shape and stride, with no view or autograd link to ``x``: the compiler
    then guards on this layout alone, not on whatever ``x`` was sliced from."""
    return torch.empty(0, dtype=x.dtype, device=x.device).set_(x.untyped_storage(), x.storage_offset(), shape, stride)


def _exercise_kernels() -> None:
    """The fused quantizer at sizes that take the vectorized and parallel loops, on a contiguous input, on
    a view of attention's q, k or v in the qkv projection and on a dense permuted one (q times its
    scale), and in place, in float32 and float64."""
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        values = torch.randn(4, 65, 3, 2, 32, generator=generator, dtype=dtype) * 3
        scale, zero_point = asymmetric_params(values.amin(), values.amax(), 8)
        query = values.permute(2, 0, 3, 1, 4)[0]
        for x in (values, query, query * 0.5):
            with torch.no_grad():
                fake_quant_asymmetric(x, scale, zero_point, 8)
        fake_quant_asymmetric_(values.clone(), scale, zero_point, 8)


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


def fake_quant_twin_uniform(x: torch.Tensor, split: torch.Tensor, bits: int) -> torch.Tensor:
    """Twin-uniform quantizer for post-softmax maps in [0, 1] (docs/quantizer.md, Twin-uniform quantizers).

    Two grids of m = 2^(b-1) - 1 steps each: [0, c] in steps of c / m for the many small values and
    [0, 1] in steps of 1 / m for the few large ones, c the split (a power of two: the large range's step
    is 2^k times the small range's). x̂ is the small-range code of min(x, c) plus the large-range code of
    max(x, c); the two codes are summed as in the authors' code, so a value above c keeps c added to it.
    """
    m = 2 ** (bits - 1) - 1
    step = split / m
    high = (x.clamp(min=split).clamp(max=1) * m).round().clamp(0, m) / m
    low = (x.clamp(min=0).clamp(max=split) / step).round().clamp(0, m) * step
    return high + low


def fake_quant_twin_signed(x: torch.Tensor, scale: torch.Tensor, negative_scale: float, bits: int) -> torch.Tensor:
    """Twin-uniform quantizer for post-GELU activations (docs/quantizer.md, Twin-uniform quantizers).

    Positive values on 2^(b-1) levels [0, 2^(b-1) - 1] · ``scale``, negative ones on 2^(b-1) levels
    [-2^(b-1), 0] · ``negative_scale``: GELU's few negative values (down to about -0.17) get their own,
    much finer, grid. ``negative_scale`` is a Python float, divided by as such.
    """
    qmax = 2 ** (bits - 1)
    positive = (x / scale).round().clamp(0, qmax - 1) * scale
    negative = (x / negative_scale).round().clamp(-qmax, 0) * negative_scale
    return positive + negative


def fake_quant_symmetric_signed(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """round(x / s) clamped to [-2^(b-1), 2^(b-1) - 1], times s: a symmetric grid whose scale may broadcast
    (per tensor, per head, per output channel); the candidates of a scale search (:mod:`harness.quant.search`)."""
    qmax = 2 ** (bits - 1)
    return (x / scale).round().clamp(-qmax, qmax - 1) * scale
