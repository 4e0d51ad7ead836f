"""Turn an FP timm model into a fake-quantized copy with quantizers placed by a profile (README §3)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

from timm.layers import Mlp
from torch import nn

from harness.arch import instrument, is_instrumented_attention, is_instrumented_block
from harness.bits import BitSpec
from harness.errors import HarnessError
from harness.instrument import attach_point
from harness.quant.modules import ActQuantizer, QuantConv2d, QuantLinear

PROFILES = ("standard", "psaq")


@dataclass(frozen=True)
class QuantConfig:
    """Quantizer options recorded in every result (spec README §3)."""

    profile: Literal["standard", "psaq"] = "standard"
    keep_first_last_fp: bool = False
    attn_quantizer: Literal["uniform", "log2"] = "uniform"  # post-softmax map, `standard` profile

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise HarnessError(f"unknown quantizer profile {self.profile!r}; accepted: {', '.join(PROFILES)}")
        if self.attn_quantizer not in ("uniform", "log2"):
            raise HarnessError(f"unknown attention quantizer {self.attn_quantizer!r}; accepted: uniform, log2")


def quantize_model(model: nn.Module, bits: BitSpec, config: QuantConfig) -> nn.Module:
    """A deep copy of ``model`` with quantized weights and observing activation quantizers.

    The copy's activation quantizers start in ``observe`` mode; a calibrator then freezes them.
    The FP model is left untouched.
    """
    if bits.is_fp:
        raise HarnessError("bit spec 'fp' needs no quantized model")
    qmodel = copy.deepcopy(model)
    instrument(qmodel)
    if not any(is_instrumented_attention(m) for m in qmodel.modules()):
        raise HarnessError(f"model {type(model).__name__} has no attention module the quantizer knows (timm ViT/DeiT/Swin)")
    first, last = _first_and_last_layers(qmodel)
    kept_fp = {id(first), id(last)} if config.keep_first_last_fp else set()
    for name, module in list(qmodel.named_modules()):
        if isinstance(module, nn.Linear) or module is first:
            layer_bits = None if id(module) in kept_fp else bits.weight_bits
            converted = (QuantLinear if isinstance(module, nn.Linear) else QuantConv2d).from_float(module, layer_bits)
            qmodel.set_submodule(name, converted)
            if module is first:
                first = converted
            if module is last:
                last = converted
    place = _place_standard if config.profile == "standard" else _place_psaq
    place(qmodel, bits.act_bits, config, first, last, keep_ends=bool(kept_fp))
    return qmodel


def _first_and_last_layers(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """The patch-embedding conv and the classifier (None for a detection/segmentation backbone)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise HarnessError(f"model {type(model).__name__} has no patch-embedding Conv2d")
    last = model.get_classifier() if hasattr(model, "get_classifier") else None
    return first, last if isinstance(last, nn.Linear) else None


def _place_standard(model: nn.Module, act_bits: int, config: QuantConfig, first: nn.Module,
                    last: nn.Module | None, keep_ends: bool) -> None:
    """Inputs of every Linear and of the patch embedding; both inputs of both attention matmuls."""
    for module in list(model.modules()):
        if isinstance(module, (QuantLinear, QuantConv2d)):
            if not (keep_ends and module in (first, last)):
                attach_point(module, "in", ActQuantizer(act_bits))
        elif is_instrumented_attention(module):
            for point in ("q", "k", "v"):
                attach_point(module, point, ActQuantizer(act_bits))
            attach_point(module, "attn", ActQuantizer(act_bits, kind=config.attn_quantizer))


def _place_psaq(model: nn.Module, act_bits: int, config: QuantConfig, first: nn.Module,
                last: nn.Module | None, keep_ends: bool) -> None:
    """Exactly the placement of PSAQ-ViT's code (README §3, profile `psaq`); post-softmax stays FP."""
    def quantize(module: nn.Module, *points: str) -> None:
        for point in points:
            attach_point(module, point, ActQuantizer(act_bits))

    if not keep_ends:
        quantize(first, "in")
        if last is not None:
            quantize(last, "out")
    for name in ("patch_embed", "pos_drop"):
        if isinstance(getattr(model, name, None), nn.Module):
            quantize(getattr(model, name), "out")
    for module in list(model.modules()):
        if isinstance(module, nn.LayerNorm):
            quantize(module, "out")
        elif is_instrumented_attention(module):
            quantize(module, "scores", *getattr(type(module), "extra_score_points", ()))
            quantize(module.qkv, "out")
            quantize(module.proj, "in", "out")
        elif is_instrumented_block(module):
            quantize(module, "residual1", "residual2")
        elif isinstance(module, Mlp):
            quantize(module.fc2, "in", "out")
