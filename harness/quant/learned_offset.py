"""Quantizers for fine-tuning with a learned step and a learned offset (docs/methods.md, MaskAQ, Fine-tuning).

An activation quantizer of this kind is LSQ (Esser et al., ICLR 2020) with a learned zero point, as MaskAQ's
code trains its activations: the step size α and the offset are parameters initialized from the first batch
the quantizer sees, the integers are signed where that batch has values below 1e-5 and unsigned otherwise,
and α's gradient is multiplied by g = γ/√(N·Q_P) with N the elements of that first batch and Q_P the top
integer. Weights stay per-output-channel min-max, their scale recomputed from the current weight at every
forward, with a straight-through gradient that ignores clipping.

During fine-tuning these modules stand in for the harness's :class:`~harness.quant.modules.ActQuantizer` at
its points (:func:`learned_offset_quantizers`); afterwards the learned values are written back into the
frozen quantizers (:func:`restore_quantizers`), whose arithmetic gives the same values in the forward pass
(docs/quantizer.md, Arithmetic: a signed grid [-2^(b-1), 2^(b-1) - 1] with offset o is the unsigned grid with
zero point o + 2^(b-1)).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from harness.model.instrument import POINTS, attach_point
from harness.quant.fake_quant import round_ste, symmetric_weight_scale
from harness.quant.modules import ActQuantizer, weight_quantized_layers

SIGNED_BELOW = 1e-5  # a first batch with a value below this makes the quantizer signed
OFFSET_MOMENTUM = 0.9  # the offset starts at 0.9·0 + 0.1·(min(x) - α·Q_P)


def gradient_scaled(x: Tensor, factor: float) -> Tensor:
    """``x`` in the forward pass, its gradient multiplied by ``factor`` (LSQ's gradient scale), written as
    the reference code writes it: the forward value is x - x·g + x·g, which may differ from x in its last bit."""
    scaled = x * factor
    return x.detach() - scaled.detach() + scaled


class LearnedOffsetQuantizer(nn.Module):
    """Per-tensor activation quantizer with learned step α and offset o (LSQ with a learned zero point).

    On its first call (unless :meth:`start` set it up, or ``grid`` names a calibrated grid to start from) it initializes from that batch: signed when min(x) <
    1e-5, α = 2·mean|x|/√Q_P, o = 0.1·(min(x) - α·Q_P), g = γ/√(numel(x)·Q_P). Then
    q = round(clamp(x/α + round(o), Q_N, Q_P)), out = (q - round(o))·α, rounding straight-through and α's
    gradient scaled by g; o's gradient is not scaled.
    """

    def __init__(self, bits: int, gradient_scale: float = 1.0) -> None:
        super().__init__()
        self.bits = bits
        self.gamma = gradient_scale
        self.alpha = nn.Parameter(torch.ones(()))
        self.offset = nn.Parameter(torch.zeros(()))
        self.signed = False
        self.initialized = False
        self.g = 1.0
        # a calibrated unsigned grid (step, zero point) to start from instead of LSQ's start; N and the
        # signedness still come from the first batch
        self.grid: tuple[Tensor, Tensor] | None = None

    @property
    def range(self) -> tuple[int, int]:
        if self.signed:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2 ** self.bits - 1

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """LSQ's data-dependent start from the batch ``x`` (the module's dtype follows it)."""
        self.signed = bool(x.min() < SIGNED_BELOW)
        top = self.range[1]
        self.alpha.data = (2 * x.abs().mean() / math.sqrt(top)).to(x.dtype)
        self.offset.data = (torch.zeros((), dtype=x.dtype) * OFFSET_MOMENTUM
                            + (1 - OFFSET_MOMENTUM) * (x.min() - self.alpha.data * top))
        self.g = self.gamma / math.sqrt(x.numel() * top)
        self.initialized = True

    @torch.no_grad()
    def start(self, scale: Tensor, zero_point: Tensor, elements: int, signed: bool) -> None:
        """Start from a calibrated unsigned grid (step ``scale``, zero point ``zero_point``) instead of a batch;
        ``elements`` is N of the gradient scale. A signed start keeps the same levels, offset by 2^(b-1)."""
        self.signed = signed
        self.alpha.data = scale.detach().clone()
        self.offset.data = zero_point.detach().clone() - (2 ** (self.bits - 1) if signed else 0)
        self.g = self.gamma / math.sqrt(elements * self.range[1])
        self.initialized = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.initialized and self.grid is not None:
            self.start(*self.grid, elements=x.numel(), signed=bool(x.min() < SIGNED_BELOW))
        elif not self.initialized:
            self.initialize(x)
        low, high = self.range
        alpha = gradient_scaled(self.alpha, self.g)
        offset = round_ste(self.offset)
        return (round_ste((x / alpha + offset).clamp(low, high)) - offset) * alpha

    def unsigned_grid(self) -> tuple[Tensor, Tensor]:
        """(step, zero point) of the same levels on the harness's unsigned grid [0, 2^b - 1]."""
        shift = 2 ** (self.bits - 1) if self.signed else 0
        return self.alpha.detach().clone(), self.offset.detach().round() + shift

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, gradient_scale={self.gamma}"


class MinMaxWeightSTE(nn.Module):
    """Parametrization: the weight fake-quantized per output channel on the min-max grid, step
    2·max(|min_c|, max_c)/(2^b - 1) recomputed from the current weight (no gradient through it), with an
    identity gradient, clipped elements included."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, weight: Tensor) -> Tensor:
        flat = weight.detach().flatten(1)
        bound = torch.maximum(-flat.min(dim=1).values, flat.max(dim=1).values)
        factor = ((2 ** self.bits - 1) / torch.clamp(2 * bound, min=1e-8)).view(-1, *([1] * (weight.dim() - 1)))
        half = 2 ** (self.bits - 1)
        quantized = torch.clamp(torch.round(factor * weight.detach()), -half, half - 1) / factor
        return weight + (quantized - weight).detach()


def learned_offset_quantizers(model: nn.Module, gradient_scale: float = 1.0,
                              gradient_scales: dict[str, float] | None = None) -> dict[str, LearnedOffsetQuantizer]:
    """Swap every frozen uniform :class:`ActQuantizer` of ``model`` for a :class:`LearnedOffsetQuantizer` of its
    bits at the same point; ``gradient_scales`` overrides γ by the quantizer's name. Returns them by name; the
    originals are kept on the new modules for :func:`restore_quantizers`."""
    swapped: dict[str, LearnedOffsetQuantizer] = {}
    for owner_name, owner in list(model.named_modules()):
        points = owner._modules.get(POINTS)
        if points is None:
            continue
        for point, quantizer in list(points._modules.items()):
            if not (isinstance(quantizer, ActQuantizer) and quantizer.frozen and quantizer.kind == "uniform"):
                continue
            name = f"{owner_name}.{POINTS}.{point}" if owner_name else f"{POINTS}.{point}"
            gamma = (gradient_scales or {}).get(name, gradient_scale)
            replacement = LearnedOffsetQuantizer(quantizer.bits, gamma).to(quantizer.scale.device)
            replacement.original = (owner, point, quantizer)  # a plain attribute: not a submodule
            attach_point(owner, point, replacement)
            swapped[name] = replacement
    return swapped


@torch.no_grad()
def restore_quantizers(swapped: dict[str, LearnedOffsetQuantizer]) -> None:
    """Write each learned quantizer's step and zero point into the frozen quantizer it replaced and put that back."""
    for replacement in swapped.values():
        owner, point, quantizer = replacement.original
        if replacement.initialized:
            scale, zero_point = replacement.unsigned_grid()
            quantizer.scale = scale.to(quantizer.low.dtype)
            quantizer.zero_point = zero_point.to(quantizer.low.dtype)
            quantizer.low.copy_(-quantizer.zero_point * quantizer.scale)
            quantizer.high.copy_((2 ** quantizer.bits - 1 - quantizer.zero_point) * quantizer.scale)
            quantizer.offset_after_round = False
        attach_point(owner, point, quantizer)
        del replacement.original


@contextlib.contextmanager
def minmax_weights_ste(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """For the block, every weight-quantized layer of ``model`` computes with :class:`MinMaxWeightSTE` of its
    weight; yields the weights (trainable). Afterwards each layer quantizes its trained weight again with the
    harness's per-channel scale, which is the same grid (docs/quantizer.md, Arithmetic)."""
    layers = [layer for _, layer in weight_quantized_layers(model) if layer.weight_bits]
    bits = [layer.weight_bits for layer in layers]
    for layer, layer_bits in zip(layers, bits):
        parametrize.register_parametrization(layer, "weight", MinMaxWeightSTE(layer_bits), unsafe=True)
        layer.weight_bits = None  # the parametrization quantizes
    try:
        yield [layer.parametrizations.weight.original for layer in layers]
    finally:
        for layer, layer_bits in zip(layers, bits):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
            layer.weight_bits = layer_bits
            with torch.no_grad():
                layer.weight_scale = symmetric_weight_scale(layer.weight, layer_bits)
