"""Quantizer scales as trainable parameters, for calibrators that learn them by gradient descent
(PSAQ-ViT V2's student, SPDFQ's block reconstruction). Rounding passes gradients straight through
(:func:`harness.quant.fake_quant.round_ste`), so the scales receive LSQ-style gradients.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from harness.quant.fake_quant import MIN_SCALE
from harness.quant.modules import ActQuantizer, act_quantizers, weight_quantized_layers


def learnable_scales(model: nn.Module, activations: bool = True, weights: bool = True) -> list[nn.Parameter]:
    """Turn the scales of frozen uniform activation quantizers and of quantized weights into parameters."""
    parameters = []
    if activations:
        for _, quantizer in act_quantizers(model):
            if quantizer.frozen and quantizer.kind == "uniform":
                parameters.append(_to_parameter(quantizer, "scale"))
    if weights:
        for _, layer in weight_quantized_layers(model):
            if layer.weight_bits:
                parameters.append(_to_parameter(layer, "weight_scale"))
    return parameters


@torch.no_grad()
def keep_scales_positive(scales: Iterable[nn.Parameter]) -> None:
    """Project learned scales back to >= ``MIN_SCALE`` after an optimizer step.

    A gradient step can carry a small scale through zero; a negative scale mirrors the quantizer,
    and clamping only at the end would evaluate a model other than the one trained.
    """
    for scale in scales:
        scale.clamp_(min=MIN_SCALE)


def fix_scales(model: nn.Module) -> None:
    """Back to buffers once learning is over: the calibrated model has no trainable quantizer state.

    An activation quantizer's ``low``/``high`` record is rewritten to the range its learned scale and
    zero-point cover, so the saved state describes the quantizer that is evaluated.
    """
    for module in model.modules():
        for name in ("scale", "weight_scale"):
            value = module._parameters.get(name)
            if value is not None and (isinstance(module, ActQuantizer) or name == "weight_scale"):
                del module._parameters[name]
                module.register_buffer(name, value.detach().clamp_min(MIN_SCALE).clone())
                if isinstance(module, ActQuantizer):
                    module.low.copy_(-module.zero_point * module.scale)
                    module.high.copy_((2 ** module.bits - 1 - module.zero_point) * module.scale)


def _to_parameter(module: nn.Module, name: str) -> nn.Parameter:
    current = getattr(module, name)
    if isinstance(current, nn.Parameter):
        return current
    del module._buffers[name]
    parameter = nn.Parameter(current.detach().clone())
    module.register_parameter(name, parameter)
    return parameter
