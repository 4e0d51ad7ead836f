"""Where the matmuls are in a quantized model, and their FP inputs on the calibration images.

Sites (docs/methods.md, Ranking-loss PTQ: every matmul): every weight-quantized Linear and the
patch-embedding Conv2d (input at its ``in`` point, weight per channel), and per attention module
q·kᵀ (points ``q``, ``k``; the ``attn`` map adds the ranking loss) and attn·v (points ``attn``,
``v``). FP values are captured from the quantized model itself with every quantizer bypassed and
weights unquantized, which is the FP model with the same module names (the instrumented forward
equals timm's; docs/quantizer.md, What is quantized).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from harness.api.quantizer import (LAYER_INPUT, ActQuantizer, QuantConv2d, Target, capture as core_capture,
                                   floating_point, get_point, is_instrumented_attention, weight_quantized_layers)
from methods.ranking.search import MatmulUnit, activation_operand, weight_operand

OPERAND_POINTS = {"layer": ("in", None), "qk": ("q", "k"), "av": ("attn", "v")}  # (X, W) points; None: the weight


def point_quantizer(module: nn.Module, point: str) -> ActQuantizer | None:
    found = get_point(module, point)
    return found if isinstance(found, ActQuantizer) else None


@dataclass
class MatmulSite:
    """One matmul of the model: a weight layer (``kind="layer"``) or an attention product."""

    name: str
    kind: Literal["layer", "qk", "av"]
    module: nn.Module

    def targets(self) -> dict[str, Target]:
        if self.kind == "layer":
            return {"x": Target(self.module, LAYER_INPUT)}
        x_point, w_point = OPERAND_POINTS[self.kind]
        targets = {"x": Target(self.module, x_point), "w": Target(self.module, w_point)}
        if self.kind == "qk":
            targets["attention_map"] = Target(self.module, "attn")
        return targets

    def searched_quantizers(self) -> list[ActQuantizer]:
        found = (point_quantizer(self.module, p) for p in OPERAND_POINTS[self.kind] if p is not None)
        return [q for q in found if q is not None]

    def unit(self, values: dict[str, torch.Tensor]) -> MatmulUnit:
        """The search problem on the captured FP ``values``."""
        x_point, w_point = OPERAND_POINTS[self.kind]
        x = activation_operand(point_quantizer(self.module, x_point), values["x"])
        if self.kind == "layer":
            layer = self.module
            if isinstance(layer, QuantConv2d):
                return MatmulUnit(self.name, x, weight_operand(layer),
                                  lambda x, w: layer._conv_forward(x, w, layer.bias), channel_dim=1)
            return MatmulUnit(self.name, x, weight_operand(layer), lambda x, w: nn.functional.linear(x, w, layer.bias))
        w = activation_operand(point_quantizer(self.module, w_point), values["w"])
        if self.kind == "qk":
            return MatmulUnit(self.name, x, w, lambda q, k: q @ k.transpose(-2, -1), values["attention_map"])
        return MatmulUnit(self.name, x, w, lambda a, v: a @ v)


def matmul_sites(qmodel: nn.Module) -> list[MatmulSite]:
    """Every matmul with at least one scale to search, in module order.

    In the ``psaq`` profile only the patch-embedding, proj and fc2 inputs sit at matmul inputs;
    q, k, v and attn carry no quantizer there, so the attention products are not searched.
    """
    layers = {id(m) for _, m in weight_quantized_layers(qmodel)}
    sites = []
    for name, module in qmodel.named_modules():
        if id(module) in layers:
            site = MatmulSite(name, "layer", module)
            if module.weight_bits or site.searched_quantizers():
                sites.append(site)
        elif is_instrumented_attention(module):
            products = (MatmulSite(f"{name}.q@k", "qk", module), MatmulSite(f"{name}.attn@v", "av", module))
            sites += [site for site in products if site.searched_quantizers()]
    return sites


def capture(qmodel: nn.Module, images: torch.Tensor, targets: dict[str, Target], device: torch.device, batch_size: int,
            reduce: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """FP values at ``targets`` for all images: the core's capture with the quantizers bypassed."""
    with floating_point(qmodel):
        return core_capture(qmodel, images, targets, device, batch_size, reduce)
