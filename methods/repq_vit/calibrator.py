"""Calibrator ``repq``: RepQ-ViT's quantizers and calibration (docs/methods.md, RepQ-ViT).

1. Every quantized weight gets per-output-channel asymmetric parameters searched over percentile
   ranges (:mod:`harness.quant.search`).
2. One forward of the calibration set in which each activation quantizer searches its parameters
   on the first tensor it meets and quantizes from then on, so every quantizer sees its input as
   the quantized model produces it. Inputs of Linears fed by a LayerNorm get per-channel parameters,
   post-softmax maps the log-√2 quantizer, the image ``input_bits`` bits; everything else per tensor.
3. Each per-channel quantizer is folded into its LayerNorm and Linear
   (:func:`harness.quant.reparam.fold_channel_params`) and becomes per-tensor; the weights of those
   Linears are searched again.

As in the authors' DeiT code, a ViT's q is quantized before timm's 1/sqrt(d) and q·kᵀ scaled after the
product (Swin's window attention scales q first, in their code and in timm's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from harness.api import CALIBRATORS, CalibrationContext, Calibrator, HarnessError
from harness.api import Range, ranged
from harness.api.quantizer import (ActQuantizer, act_quantizers, fold_channel_params, get_point,
                                   is_instrumented_attention, norm_linear_pairs, percentile_mse_log_sqrt2_scale,
                                   percentile_mse_params, weight_quantized_layers)


@dataclass
class RepQOptions:
    """Defaults of the authors' code (docs/methods.md, RepQ-ViT)."""

    percentiles: list[float] = ranged(Range(low=0.5, high=1, low_open=True),  # candidate clipping ranges
                                      default_factory=lambda: [0.999, 0.9999, 0.99999])
    input_bits: int = ranged(Range(low=2, high=16), 8)  # the image (patch-embedding input) stays at 8 bits
    post_softmax: str = "log_sqrt2"  # post-softmax quantizer: log_sqrt2, or uniform
    reparameterize: bool = True  # fold per-channel post-LayerNorm quantizers into per-tensor ones
    # how quantiles are computed: published (torch <= 2.13's arithmetic, numpy above 2^24 values, the published
    # figures' code path), or torch2.14 (the authors' code on torch 2.14)
    quantile: Literal["published", "torch2.14"] = "published"

    def __post_init__(self) -> None:
        if not self.percentiles or not all(0.5 < p <= 1 for p in self.percentiles):
            raise ValueError("percentiles must be a non-empty list of values in (0.5, 1]")
        if not 2 <= self.input_bits <= 16:
            raise ValueError("input_bits must be in 2..16")
        if self.post_softmax not in ("log_sqrt2", "uniform"):
            raise ValueError("post_softmax must be log_sqrt2 or uniform")
        if self.quantile not in ("published", "torch2.14"):
            raise ValueError("quantile must be published or torch2.14")


class _SearchOnFirstBatch:
    """Observer that searches its quantizer's parameters on the first tensor and freezes it at once."""

    def __init__(self, quantizer: ActQuantizer, search: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
        self.quantizer, self.search = quantizer, search

    def update(self, x: torch.Tensor) -> None:
        self.quantizer.set_params(*self.search(x))

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.quantizer.low, self.quantizer.high


@CALIBRATORS.register("repq")
class RepQCalibrator(Calibrator):
    """RepQ-ViT: percentile-searched quantizers, per-channel post-LayerNorm folded into per-tensor, log-√2 softmax."""

    Options = RepQOptions
    version = "2"  # 2: quantiles in a declared arithmetic (option quantile); a ViT's q quantized before 1/sqrt(d)

    @torch.no_grad()
    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> dict[str, Any]:
        options = self.options
        self._search_weights(layer for _, layer in weight_quantized_layers(qmodel))
        pairs = [(norm, linear, get_point(linear, "in")) for norm, linear in norm_linear_pairs(qmodel)]
        channel_quantizers = {id(quantizer) for _, _, quantizer in pairs if quantizer is not None}
        first = next((m for m in qmodel.modules() if isinstance(m, nn.Conv2d)), None)
        image_quantizer = get_point(first, "in") if first is not None else None
        if image_quantizer is not None:
            image_quantizer.bits = options.input_bits
        for module in qmodel.modules():
            if is_instrumented_attention(module) and hasattr(module, "scale_after_product"):
                module.scale_after_product = True
        if options.post_softmax == "log_sqrt2":
            for module in qmodel.modules():
                quantizer = get_point(module, "attn") if is_instrumented_attention(module) else None
                if quantizer is not None:
                    quantizer.kind = "log_sqrt2"
        for _, quantizer in act_quantizers(qmodel):
            quantizer.mode = "observe"
            quantizer.observer = _SearchOnFirstBatch(quantizer, self._search_for(quantizer, channel_quantizers))
        was_training = qmodel.training
        qmodel.eval()
        qmodel(context.calibration.images.to(context.device))  # the whole set in one batch, as the authors
        qmodel.train(was_training)
        unreached = [name for name, quantizer in act_quantizers(qmodel) if not quantizer.frozen]
        if unreached:
            raise HarnessError(f"activation quantizer {unreached[0]}: the calibration pass did not reach it")
        folded = 0
        if options.reparameterize:
            for norm, linear, quantizer in pairs:
                if quantizer is None or quantizer.scale.dim() == 0:
                    continue
                quantizer.set_params(*fold_channel_params(norm, linear, quantizer.scale, quantizer.zero_point))
                self._search_weights([linear])
                folded += 1
        return {"reparameterized_norms": folded}

    def _search_for(self, quantizer: ActQuantizer,
                    channel_quantizers: set[int]) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        percentiles, bits, arithmetic = self.options.percentiles, quantizer.bits, self.options.quantile
        if quantizer.kind == "log_sqrt2":
            def log_sqrt2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                scale = percentile_mse_log_sqrt2_scale(x, bits, percentiles, arithmetic)
                return scale, torch.zeros_like(scale)
            return log_sqrt2
        if quantizer.kind != "uniform":
            raise HarnessError(f"calibrator repq searches uniform and log_sqrt2 quantizers, not {quantizer.kind!r}")
        if id(quantizer) in channel_quantizers:
            return lambda x: percentile_mse_params(x.reshape(-1, x.shape[-1]).t(), bits, percentiles, arithmetic)
        return lambda x: tuple(p[0] for p in percentile_mse_params(x.reshape(1, -1), bits, percentiles, arithmetic))

    def _search_weights(self, layers: Iterable[nn.Module]) -> None:
        for layer in layers:
            if layer.weight_bits:
                layer.set_weight_params(*percentile_mse_params(layer.weight.flatten(1), layer.weight_bits,
                                                               self.options.percentiles, self.options.quantile))
