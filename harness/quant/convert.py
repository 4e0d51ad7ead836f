"""Turn an FP timm model into a fake-quantized copy with quantizers placed by a profile (docs/quantizer.md, What is quantized).

A profile is a registration in :data:`PROFILES` (name, placement, how ranges are observed, which attention
modules it covers): a new one needs no edit here (docs/quantizer.md, Profiles).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

from timm.layers import Mlp
from timm.models.swin_transformer import PatchMerging
from torch import nn

from harness.errors import HarnessError
from harness.model.arch import SUPPORTED, instrument, is_instrumented_attention
from harness.model.instrument import attach_point, get_point
from harness.plugin.registry import Registry
from harness.quant.bits import BitSpec
from harness.quant.modules import ActQuantizer, QuantConv2d, QuantLinear

ATTN_QUANTIZERS = ("uniform", "log2", "log_sqrt2")  # post-softmax quantizers (docs/quantizer.md)


@dataclass(frozen=True)
class QuantConfig:
    """Quantizer options recorded in every result (docs/quantizer.md, What is quantized)."""

    profile: str = "standard"  # a name in PROFILES
    keep_first_last_fp: bool = False
    attn_quantizer: Literal["uniform", "log2", "log_sqrt2"] = "uniform"  # post-softmax map, `standard` profile

    def __post_init__(self) -> None:
        PROFILES.get(self.profile)  # an unknown name is one line listing the registered profiles
        if self.attn_quantizer not in ATTN_QUANTIZERS:
            raise HarnessError(f"unknown attention quantizer {self.attn_quantizer!r}; "
                               f"accepted: {', '.join(ATTN_QUANTIZERS)}")

    @property
    def observe_in_fp(self) -> bool:
        """Ranges observed on FP weights (`psaq`, as PSAQ-ViT's code) or quantized ones (`standard`):
        docs/quantizer.md, Calibration."""
        return PROFILES.get(self.profile).observe_in_fp


class Placement(Protocol):
    def __call__(self, model: nn.Module, act_bits: int, config: QuantConfig, first: nn.Module,
                 last: nn.Module | None, keep_ends: bool) -> None:
        """Attach activation quantizers to ``model`` (its weight-quantized layers already in place)."""


@dataclass(frozen=True)
class QuantProfile:
    """Where a profile puts activation quantizers and with which weights it observes their ranges."""

    place: Placement
    observe_in_fp: bool
    # which instrumented attention modules it knows, and in words for the refusal
    covers: Callable[[nn.Module], bool] = lambda attention: True
    coverage: str = "every instrumented family"


PROFILES: Registry[QuantProfile] = Registry("quantizer profile", QuantProfile, of_classes=False)


def quantize_model(model: nn.Module, bits: BitSpec, config: QuantConfig,
                   part: Callable[[nn.Module], nn.Module] | None = None) -> nn.Module:
    """A deep copy of ``model`` with quantized weights and observing activation quantizers.

    ``part`` picks what is quantized inside the copy (a detector's backbone, README, Tasks); by default
    the whole model. The copy's activation quantizers start in ``observe`` mode; a calibrator then
    freezes them. The FP model is left untouched.
    """
    if bits.is_fp:
        raise HarnessError("bit spec 'fp' needs no quantized model")
    qmodel = copy.deepcopy(model)
    quantize_in_place(part(qmodel) if part is not None else qmodel, bits, config)
    return qmodel


def quantize_in_place(model: nn.Module, bits: BitSpec, config: QuantConfig) -> None:
    """Quantize every Linear and Conv2d of ``model`` (in a ViT/Swin: the patch embedding is its only conv)."""
    instrument(model)
    attentions = [m for m in model.modules() if is_instrumented_attention(m)]
    if not attentions:
        raise HarnessError(f"model {type(model).__name__} has no attention module the quantizer knows ({SUPPORTED})")
    profile = PROFILES.get(config.profile)
    if not all(profile.covers(m) for m in attentions):
        raise HarnessError(f"profile {config.profile!r} covers {profile.coverage} only; use --profile standard for "
                           f"{type(model).__name__}")
    first, last = _first_and_last_layers(model)
    kept_fp = {id(first), id(last)} if config.keep_first_last_fp else set()
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            layer_bits = None if id(module) in kept_fp else bits.weight_bits
            converted = (QuantLinear if isinstance(module, nn.Linear) else QuantConv2d).from_float(module, layer_bits)
            converted.observe_in_fp = profile.observe_in_fp
            model.set_submodule(name, converted)
            if module is first:
                first = converted
            if module is last:
                last = converted
    profile.place(model, bits.act_bits, config, first, last, keep_ends=bool(kept_fp))
    _mark_temporaries(model)


def _mark_temporaries(model: nn.Module) -> None:
    """Tell the quantizers whose input an instrumented forward makes for them alone (its
    ``temporary_points()``) that evaluation may overwrite it (docs/quantizer.md, Evaluation cost)."""
    for module in model.modules():
        for path in module.temporary_points() if hasattr(module, "temporary_points") else ():
            owner_path, _, point = path.rpartition(".")
            try:
                owner = module.get_submodule(owner_path)
            except AttributeError:  # a block without that child
                continue
            quantizer = get_point(owner, point)
            if isinstance(quantizer, ActQuantizer):
                quantizer.input_is_temporary = True


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
    """PSAQ-ViT's code, quantizer for quantizer (docs/quantizer.md, The `psaq` placement).

    Post-softmax stays FP. The classifier's input is quantized (the pooled features); a ViT that
    pools by taking the class token has no quantizer on its final norm's output, since the
    authors quantize that norm's class-token rows only, which is the classifier's input.
    """
    def quantize(module: nn.Module, *points: str) -> None:
        for point in points:
            attach_point(module, point, ActQuantizer(act_bits))

    if not keep_ends:
        quantize(first, "in")
        if last is not None:
            quantize(last, "out")
    quantize(first, "out")
    if last is not None:
        quantize(last, "in")
    class_token_norm = getattr(model, "norm", None) if getattr(model, "global_pool", None) == "token" else None
    for module in list(model.modules()):
        quantize(module, *getattr(type(module), "psaq_points", ()))
        if isinstance(module, nn.LayerNorm) and module is not class_token_norm:
            quantize(module, "out")
        elif is_instrumented_attention(module):
            quantize(module.qkv, "out")
            quantize(module.proj, "in", "out")
        elif isinstance(module, Mlp):
            quantize(module.fc2, "in", "out")
        elif isinstance(module, PatchMerging):
            quantize(module.reduction, "out")


PROFILES.add("standard", QuantProfile(place=_place_standard, observe_in_fp=False))
PROFILES.add("psaq", QuantProfile(place=_place_psaq, observe_in_fp=True,
                                  covers=lambda attention: getattr(type(attention), "psaq_profile", True),
                                  coverage="timm ViT/DeiT/Swin"))
