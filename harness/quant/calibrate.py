"""The calibration pass shared by range-based calibrators: observe, then freeze (docs/quantizer.md, Calibration)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from harness.errors import HarnessError
from harness.progress import progress_bar
from harness.quant.fake_quant import fake_quant_symmetric, symmetric_weight_scale
from harness.quant.modules import (
    ActQuantizer,
    Observer,
    act_quantizers,
    unquantized_weights,
    weight_quantized_layers,
)


@torch.no_grad()
def observe_and_freeze(
    qmodel: nn.Module,
    images: torch.Tensor,
    make_observer: Callable[[ActQuantizer], Observer],
    device: torch.device,
    batch_size: int = 32,
) -> None:
    """Run the images through ``qmodel`` with every activation quantizer observing, then freeze.

    Activations pass through unquantized while observed. Weights are those the profile observes
    with: quantized in ``standard``, FP in ``psaq`` (PSAQ-ViT's calibration runs the FP model), as
    each layer's ``observe_in_fp`` says. After the pass each quantizer's range is fixed, so
    evaluation is independent of the batch size.
    """
    quantizers = act_quantizers(qmodel)
    for _, quantizer in quantizers:
        quantizer.mode, quantizer.observer = "observe", make_observer(quantizer)
    was_training = qmodel.training
    qmodel.eval()
    with unquantized_weights(layer for _, layer in weight_quantized_layers(qmodel) if layer.observe_in_fp):
        for start in progress_bar(range(0, len(images), batch_size), desc="calibrate", leave=False):
            qmodel(images[start:start + batch_size].to(device))
    qmodel.train(was_training)
    for name, quantizer in quantizers:
        try:
            low, high = quantizer.observer.range()
        except RuntimeError as error:
            raise HarnessError(f"activation quantizer {name}: {error}") from error
        if not (torch.isfinite(low) and torch.isfinite(high)):
            raise HarnessError(f"activation quantizer {name} observed non-finite values; calibration images are invalid")
        quantizer.freeze(low, high)


@torch.no_grad()
def mse_weight_scales(qmodel: nn.Module, num_candidates: int = 100, min_ratio: float = 0.5) -> None:
    """Per-channel MSE-optimal clipping of weights: scale = alpha·(min-max scale), alpha in [min_ratio, 1]."""
    for _, layer in weight_quantized_layers(qmodel):
        if not layer.weight_bits:
            continue
        weight = layer.weight.detach()
        base = symmetric_weight_scale(weight, layer.weight_bits)
        best_error = torch.full_like(base, float("inf"))
        best_scale = base.clone()
        for alpha in torch.linspace(min_ratio, 1.0, num_candidates).tolist():
            scale = base * alpha
            error = (fake_quant_symmetric(weight, scale, layer.weight_bits) - weight).pow(2)
            error = error.flatten(1).mean(1).view_as(base)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_scale = torch.where(better, scale, best_scale)
        layer.weight_scale = best_scale
