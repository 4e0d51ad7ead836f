"""Quantizer modules: per-tensor activation quantizers and weight-quantized Linear / Conv2d."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from harness.quant.adalog import fake_quant_adalog
from harness.quant.fake_quant import (
    MIN_SCALE,
    asymmetric_params,
    fake_quant_asymmetric,
    fake_quant_asymmetric_,
    fake_quant_log2,
    fake_quant_log_sqrt2,
    fake_quant_offset_after_round,
    fake_quant_symmetric,
    fake_quant_twin_signed,
    fake_quant_twin_uniform,
    symmetric_weight_scale,
)

Mode = Literal["observe", "quantize", "bypass"]
Kind = Literal["uniform", "log2", "log_sqrt2", "twin_uniform", "twin_signed", "adalog"]
_overwrite_temporaries = False  # set by in_place_evaluation()


class Observer(Protocol):
    def update(self, x: torch.Tensor) -> None: ...

    def range(self) -> tuple[torch.Tensor, torch.Tensor]: ...


class ActQuantizer(nn.Module):
    """Per-tensor asymmetric uniform activation quantizer (docs/quantizer.md, Arithmetic), or log2 / log-√2
    for attention maps, or a twin-uniform kind (docs/quantizer.md, Twin-uniform quantizers): ``twin_uniform`` for
    post-softmax maps, ``twin_signed`` for post-GELU activations. The kind is chosen per point.

    Modes: ``observe`` passes values through while an observer records them (calibration),
    ``quantize`` applies the frozen range, ``bypass`` is floating point. Ranges live in buffers so
    a calibrated model is saved and reloaded with its state dict. An observer may freeze the
    quantizer as soon as it has seen a batch (:meth:`set_params`); that batch is then quantized
    already, so later quantizers observe it quantized (docs/quantizer.md, Searched quantizers).

    ``input_is_temporary`` (set by the placement where the instrumented forward says so): the input
    is a tensor the forward made for this point alone, so inside :func:`in_place_evaluation` a
    uniform per-tensor quantizer overwrites it instead of writing a new tensor (docs/quantizer.md,
    Evaluation cost).
    """

    def __init__(self, bits: int, kind: Kind = "uniform") -> None:
        super().__init__()
        self.bits = bits
        self.kind = kind
        self.mode: Mode = "observe"
        self.observer: Observer | None = None
        self.offset_after_round = False  # zero point added after rounding (set by set_params)
        self.input_is_temporary = False
        self._negative_scale_read: tuple[tuple[int, int], float] | None = None  # twin_signed: (buffer key, value)
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "quantize":
            if self.kind == "log2":
                return fake_quant_log2(x, self.bits)
            if self.kind == "log_sqrt2":
                return fake_quant_log_sqrt2(x, self.scale, self.bits)
            if self.kind == "twin_uniform":
                return fake_quant_twin_uniform(x, self.scale, self.bits)
            if self.kind == "twin_signed":
                return fake_quant_twin_signed(x, self.scale, self._negative_scale(), self.bits)
            if self.kind == "adalog":  # AdaLog (harness.quant.adalog): zero_point is the input shift
                return fake_quant_adalog(x, self.scale, self.log_base, self.zero_point, self.bits)
            if self.offset_after_round:
                return fake_quant_offset_after_round(x, self.scale, self.zero_point, self.bits)
            if self._may_overwrite(x):
                return fake_quant_asymmetric_(x, self.scale, self.zero_point, self.bits)
            return fake_quant_asymmetric(x, self.scale, self.zero_point, self.bits)
        if self.mode == "observe" and self.observer is not None:
            self.observer.update(x)
            if self.mode == "quantize":  # the observer froze this quantizer on this batch
                return self(x)
        return x

    def _negative_scale(self) -> float:
        """``twin_signed``'s negative step as the Python float it is divided by, read from the buffer once
        per value it holds (not once per forward: on a GPU each read waits for the device)."""
        key = (id(self.zero_point), self.zero_point._version)
        if self._negative_scale_read is None or self._negative_scale_read[0] != key:
            self._negative_scale_read = (key, self.zero_point.item())
        return self._negative_scale_read[1]

    def _may_overwrite(self, x: torch.Tensor) -> bool:
        """Whether this forward may quantize ``x`` in its own memory: a declared temporary, during an
        evaluation, with no hook on this quantizer that could hold the input."""
        return (_overwrite_temporaries and self.input_is_temporary and not torch.is_grad_enabled()
                and x.is_contiguous() and self.scale.dim() == 0 and self.zero_point.dim() == 0
                and not self._forward_pre_hooks and not self._forward_hooks)

    def freeze(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Fix the range [low, high] (widened to contain 0, docs/quantizer.md, Arithmetic) and start
        quantizing. The range keeps the quantizer's dtype (float32 unless the model was converted)."""
        zero = torch.zeros((), dtype=self.low.dtype)
        low = torch.minimum(torch.as_tensor(low, dtype=self.low.dtype), zero)
        high = torch.maximum(torch.as_tensor(high, dtype=self.low.dtype), zero)
        if self.kind == "log_sqrt2":  # the largest level is the top of the range
            scale, zero_point = high.clamp_min(MIN_SCALE), torch.zeros_like(high)
        else:
            scale, zero_point = asymmetric_params(low, high, self.bits)
        for name, value in (("low", low), ("high", high), ("scale", scale), ("zero_point", zero_point)):
            getattr(self, name).copy_(value)
        self.offset_after_round = False
        self.observer = None
        self.mode = "quantize"

    def set_params(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Fix a searched scale and zero point (per tensor, or per channel of the last dimension) and
        start quantizing with the zero point added after rounding (docs/quantizer.md, Searched quantizers).

        ``low`` / ``high`` record the represented range (per channel: its extremes over channels). The
        scale may also have any shape that broadcasts against the input (per head: ``(heads, 1, 1)``).
        Twin-uniform kinds: ``twin_uniform`` takes the split c as ``scale`` (``zero_point`` unused);
        ``twin_signed`` the positive range's step as ``scale`` and the negative range's as ``zero_point``.
        """
        scale, zero_point = scale.detach().to(self.low.dtype), zero_point.detach().to(self.low.dtype)
        self.scale, self.zero_point = scale.clone(), zero_point.clone()
        half = 2 ** (self.bits - 1)
        if self.kind == "uniform":
            self.low.copy_((-zero_point * scale).min())
            self.high.copy_(((2 ** self.bits - 1 - zero_point) * scale).max())
        elif self.kind == "twin_uniform":  # the two codes summed: 1 + c at the top
            self.low.zero_()
            self.high.copy_(1 + scale.max())
        elif self.kind == "twin_signed":
            self.low.copy_(-half * zero_point.max())
            self.high.copy_((half - 1) * scale.max())
        else:  # log-√2: levels from 0 up to the scale
            self.low.zero_()
            self.high.copy_(scale.max())
        self.offset_after_round = self.kind == "uniform"
        self.observer = None
        self.mode = "quantize"

    @property
    def frozen(self) -> bool:
        return self.mode == "quantize"

    def extra_repr(self) -> str:
        return f"bits={self.bits}, kind={self.kind}, mode={self.mode}"


class _WeightQuantMixin:
    """Per-output-channel symmetric weight fake quantization with a cached quantized weight.

    A calibrator may give each channel a zero point too (``set_weight_params``): the weight is then
    quantized asymmetrically, the zero point added after rounding (docs/quantizer.md, Searched quantizers).

    The cache is keyed on the tensor versions of weight and scale, so evaluation pays for weight
    quantization once while calibrators that edit weights or scales in place still see fresh values.
    ``observe_in_fp``: while activation ranges are observed the layer computes with its FP weight
    (the ``psaq`` profile); otherwise with its quantized weight (docs/quantizer.md, Calibration).
    """

    weight: nn.Parameter
    weight_scale: torch.Tensor
    observe_in_fp: bool = False

    def _init_weight_quant(self, bits: int | None) -> None:
        self.weight_bits = bits
        scale = symmetric_weight_scale(self.weight, bits) if bits else torch.ones(())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", None)
        self._cache_key: tuple | None = None
        self._cached_weight: torch.Tensor | None = None

    def _adopt(self, source: nn.Module, bits: int | None) -> "_WeightQuantMixin":
        """Share ``source``'s parameters and hooks (no copy), then set up weight quantization."""
        self.weight, self.bias = source.weight, source.bias
        self._forward_pre_hooks.update(source._forward_pre_hooks)
        self._forward_hooks.update(source._forward_hooks)
        self._init_weight_quant(bits)
        return self.train(source.training)

    def set_weight_bits(self, bits: int | None) -> None:
        """Change the bit width (mixed precision) and reset the scale to the min-max default."""
        self.weight_bits = bits
        self.weight_zero_point = None
        if bits:
            self.weight_scale = symmetric_weight_scale(self.weight, bits)

    def set_weight_params(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Per-output-channel asymmetric parameters (one value per channel) from a calibrator's search."""
        shape = (-1, *([1] * (self.weight.dim() - 1)))
        self.weight_scale = scale.detach().reshape(shape).clone()
        self.weight_zero_point = zero_point.detach().reshape(shape).clone()

    def _fake_quant_weight(self) -> torch.Tensor:
        if self.weight_zero_point is not None:
            return fake_quant_offset_after_round(self.weight, self.weight_scale, self.weight_zero_point,
                                                 self.weight_bits)
        return fake_quant_symmetric(self.weight, self.weight_scale, self.weight_bits)

    def quantized_weight(self) -> torch.Tensor:
        if not self.weight_bits:
            return self.weight
        rounding = self.__dict__.get("weight_rounding")  # a learned rounding (AdaRound) while it is trained
        if rounding is not None:
            return rounding(self.weight)
        if torch.is_grad_enabled() and (self.weight.requires_grad or self.weight_scale.requires_grad):
            return self._fake_quant_weight()
        key = (self.weight._version, id(self.weight), self.weight_scale._version, id(self.weight_scale), self.weight_bits,
               id(self.weight_zero_point))
        if key != self._cache_key:
            with torch.no_grad():
                self._cached_weight = self._fake_quant_weight()
            self._cache_key = key
        return self._cached_weight


class QuantLinear(_WeightQuantMixin, nn.Linear):
    """``nn.Linear`` sharing the original's parameters, with fake-quantized weights."""

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int | None) -> "QuantLinear":
        with torch.device("meta"):
            module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        return module._adopt(linear, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


class QuantConv2d(_WeightQuantMixin, nn.Conv2d):
    """``nn.Conv2d`` (the patch embedding) sharing the original's parameters, weights fake-quantized."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int | None) -> "QuantConv2d":
        with torch.device("meta"):
            module = cls(
                conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                bias=conv.bias is not None, padding_mode=conv.padding_mode,
            )
        return module._adopt(conv, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


@contextlib.contextmanager
def in_place_evaluation() -> Iterator[None]:
    """For the block, quantizers whose input is a declared temporary overwrite it (docs/quantizer.md,
    Evaluation cost). Evaluation only: a calibrator may keep references to activations it captured."""
    global _overwrite_temporaries
    previous, _overwrite_temporaries = _overwrite_temporaries, True
    try:
        yield
    finally:
        _overwrite_temporaries = previous


@contextlib.contextmanager
def unquantized_weights(layers: Iterable[nn.Module]) -> Iterator[None]:
    """The layers compute with their FP weights for the duration of a block; scales are kept."""
    layers = list(layers)
    bits = [layer.weight_bits for layer in layers]
    for layer in layers:
        layer.weight_bits = None  # an attribute swap: keeps the scales, unlike set_weight_bits
    try:
        yield
    finally:
        for layer, layer_bits in zip(layers, bits):
            layer.weight_bits = layer_bits


def act_quantizers(model: nn.Module) -> list[tuple[str, ActQuantizer]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ActQuantizer)]


def weight_quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _WeightQuantMixin)]
