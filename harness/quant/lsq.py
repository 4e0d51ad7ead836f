"""LSQ's gradient scale for learned quantizer step sizes (the fine-tuning tuners; docs/methods.md, Fine-tuning).

Kept apart from :mod:`harness.quant.learnable`, which calibrators use: a tuner's training dynamics do not
change what the quantizer computes, so they are not part of the quantizer's code version.
"""
from __future__ import annotations

import math

from torch import nn
from torch.utils.hooks import RemovableHandle

from harness.quant.modules import act_quantizers, weight_quantized_layers


def lsq_gradient_scale(model: nn.Module) -> list[RemovableHandle]:
    """Scale the gradient of every learnable quantizer scale by LSQ's g = 1/sqrt(N·Q_P) (Esser et al., ICLR 2020;
    docs/methods.md, Fine-tuning): N the elements the scale quantizes (a weight tensor; an activation tensor as
    it arrives, batch included), Q_P the largest integer (2^(b-1) - 1 for signed weights, 2^b - 1 for
    activations). The step-size gradient itself is what the fake quantizers' straight-through rounding
    already gives: round(x/s) - x/s inside the range, the clamp bound outside. Returns the hooks' handles.
    """
    handles: list[RemovableHandle] = []
    for _, quantizer in act_quantizers(model):
        scale = quantizer._parameters.get("scale")
        if isinstance(scale, nn.Parameter):
            elements = {"n": 1}
            handles.append(quantizer.register_forward_pre_hook(
                lambda _, args, elements=elements: elements.update(n=args[0].numel())))
            positive = 2 ** quantizer.bits - 1
            handles.append(scale.register_hook(
                lambda grad, elements=elements, positive=positive: grad / math.sqrt(elements["n"] * positive)))
    for _, layer in weight_quantized_layers(model):
        scale = layer._parameters.get("weight_scale")
        if isinstance(scale, nn.Parameter) and layer.weight_bits:
            factor = 1 / math.sqrt(layer.weight.numel() * (2 ** (layer.weight_bits - 1) - 1))
            handles.append(scale.register_hook(lambda grad, factor=factor: grad * factor))
    return handles
