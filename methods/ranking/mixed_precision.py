"""Mixed-precision bit allocation (docs/methods.md, Ranking-loss PTQ; docs/quantizer.md, Bit specs, ``mpX``).

Sensitivity of a layer is a nuclear norm: of the attention map for the layers of an attention
module (qkv and proj share their module's map), of the layer's output feature otherwise (MLP fc1,
fc2, and likewise the patch embedding, Swin's patch merging and the head). Norms are averaged over
the images (over windows for Swin), the attention map's summed over heads.

The budget is an average over weights, each layer weighted by its parameter count: ``mp6`` costs
the memory of uniform 6-bit weights. Maximizing Σ σ_l·b_l under Σ n_l·b_l <= budget·Σ n_l is a
multiple-choice knapsack, solved by dynamic programming over the parameter count: exactly while
the counts fit in :data:`MAX_CAPACITY` units of their gcd, else with counts rounded up (the budget
still holds). The objective is linear in the bits, so most layers end at the lowest or highest choice.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from harness.api import HarnessError
from harness.api.quantizer import LAYER_OUTPUT, QuantConv2d, Target, is_instrumented_attention, weight_quantized_layers
from methods.ranking.units import capture

MAX_CAPACITY = 200_000  # knapsack cells per layer; parameter counts are rounded up beyond it


def nuclear_norm(value: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image nuclear norm: an attention map (B, heads, N, N) summed over heads, a feature as (B, tokens, C)."""
    value = value.float()
    if kind == "attention":
        return torch.linalg.matrix_norm(value, ord="nuc").sum(1)
    if kind == "conv":
        value = value.flatten(2).transpose(1, 2)
    return torch.linalg.matrix_norm(value.reshape(value.shape[0], -1, value.shape[-1]), ord="nuc")


@torch.no_grad()
def layer_sensitivity(qmodel: nn.Module, images: torch.Tensor, device: torch.device,
                      batch_size: int) -> dict[str, float]:
    """σ per weight-quantized layer, from one FP pass over the calibration images."""
    targets, kinds, source = {}, {}, {}
    for name, module in qmodel.named_modules():
        if is_instrumented_attention(module):
            targets[name], kinds[name] = Target(module, "attn"), "attention"
            for child in module.children():
                source[id(child)] = name
    for name, layer in weight_quantized_layers(qmodel):
        if layer.weight_bits and id(layer) not in source:
            targets[name] = Target(layer, LAYER_OUTPUT)
            kinds[name] = "conv" if isinstance(layer, QuantConv2d) else "linear"
            source[id(layer)] = name
    norms = capture(qmodel, images, targets, device, batch_size, reduce=lambda key, v: nuclear_norm(v, kinds[key]))
    return {name: float(norms[source[id(layer)]].mean())
            for name, layer in weight_quantized_layers(qmodel) if layer.weight_bits}


def allocate_bits(sensitivity: dict[str, float], sizes: dict[str, int], budget: int,
                  choices: Sequence[int]) -> dict[str, int]:
    """Bits per layer from ``choices`` maximizing Σ σ·b with the parameter-weighted mean <= ``budget``."""
    choices = sorted(set(choices))
    lowest = choices[0]
    if budget < lowest:
        raise HarnessError(f"mixed-precision budget {budget} bits is below the smallest bit choice {lowest}")
    names = list(sensitivity)
    step = math.gcd(*(c - lowest for c in choices)) or 1
    unit = math.gcd(*(sizes[n] for n in names))
    total = sum(sizes[n] for n in names)
    unit = max(unit, math.ceil(total / MAX_CAPACITY))  # coarser units round sizes up: still within budget
    capacity = (budget - lowest) * total // (step * unit)
    best = torch.zeros(capacity + 1, dtype=torch.float64)  # best value within each spare capacity
    picks = []
    for name in names:
        size = math.ceil(sizes[name] / unit)
        options = torch.full((len(choices), capacity + 1), -math.inf, dtype=torch.float64)
        for j, bits in enumerate(choices):
            cost = size * (bits - lowest) // step
            if cost <= capacity:
                options[j, cost:] = best[:capacity + 1 - cost] + sensitivity[name] * bits
        best, pick = options.max(dim=0)
        picks.append(pick)
    allocation, spare = {}, capacity
    for name, pick in zip(reversed(names), reversed(picks)):
        bits = choices[int(pick[spare])]
        allocation[name] = bits
        spare -= math.ceil(sizes[name] / unit) * (bits - lowest) // step
    return {name: allocation[name] for name in names}


def average_bits(allocation: dict[str, int], sizes: dict[str, int]) -> float:
    """The parameter-weighted mean bit width the budget constrains."""
    return sum(allocation[n] * sizes[n] for n in allocation) / sum(sizes[n] for n in allocation)
