"""Calibrator ``aphq``: APHQ-ViT's pipeline (docs/methods.md, APHQ-ViT).

1. MLP reconstruction (option ``mlp_reconstruction``): every block's MLP gets ReLU in place of GELU and its
   norm2 / fc1 / fc2 learn to give the FP model's MLP output (:func:`harness.quant.reconstruction.reconstruct_mlps`);
   the quantized model keeps ReLU from then on.
2. Calibration: every quantizer searched on a grid by output MSE over the first ``calib_size`` images
   (:func:`harness.quant.grid_search.calibrate_by_grid_search`), per head for the attention matmuls.
3. Block reconstruction with AdaRound and QDrop under the average-perturbation-Hessian loss
   (:mod:`harness.quant.reconstruction`) on the first ``optim_size`` images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from harness.api import BLOCKS, CALIBRATORS, LOGITS, CalibrationContext, Calibrator
from harness.api import at_least, positive, probability
from harness.api.quantizer import (LogitKL, PerturbationHessian, ReconstructionSettings, calibrate_by_grid_search,
                                   floating_point, reconstruct, reconstruct_mlps, relu_mlps)


@dataclass
class APHQOptions:
    """The authors' defaults, configs/4bit/best.py and their code (docs/methods.md, APHQ-ViT)."""

    calib_size: int = at_least(1, 128)  # images the quantizer search sees (the first of the set)
    optim_size: int = at_least(1, 1024)  # images reconstruction sees
    search_candidates: int = at_least(2, 128)  # eq_n
    search_rounds: int = at_least(0, 3)  # search_round
    search_batch: int = at_least(1, 32)  # calib_batch_size: images per summed score
    input_bits: int = at_least(8, 8)  # qconv_a_bit: >= 8, the patch embedding's input stays unquantized
    per_head: bool = True  # matmul_head_channel_wise
    reparameterize: bool = True  # LayerNorm-fed Linears: per-channel, folded into the norm (equal W/A bits)
    mlp_reconstruction: bool = True  # --reconstruct-mlp, GELU → ReLU (their README's command)
    mlp_iterations: int = at_least(0, 20000)  # per block
    mlp_lr: float = positive(4e-5)
    mlp_percentile: float = probability(0.98)  # pct: fc2's input clip for the quantized term
    iterations: int = at_least(0, 20000)  # per unit (their reconstruct_single_block default)
    batch_size: int = at_least(1, 32)  # optim_batch_size
    drop_prob: float = probability(0.5)  # QDrop
    temperature: float = positive(20.0)  # temp: logits / T in the Hessian's KL divergence

    def __post_init__(self) -> None:
        if min(self.calib_size, self.optim_size, self.batch_size, self.search_batch) < 1 or self.input_bits < 8:
            raise ValueError("sizes must be >= 1 and input_bits >= 8")


@CALIBRATORS.register("aphq")
class APHQCalibrator(Calibrator):
    """APHQ-ViT: MLP reconstruction (ReLU), grid-searched uniform quantizers, AdaRound+QDrop under the
    average perturbation Hessian."""

    Options = APHQOptions
    version = "1"
    needs = frozenset({BLOCKS, LOGITS})  # its losses are defined on the model's logits (docs/methods.md)
    smoke_options: ClassVar[dict[str, Any]] = {"iterations": 2, "mlp_iterations": 2, "search_candidates": 16,
                                               "search_rounds": 1}

    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> dict[str, Any]:
        options, images, device = self.options, context.calibration.images, context.device
        optim_images = images[:options.optim_size]
        info: dict[str, Any] = {}
        if options.mlp_reconstruction:
            relu_mlps(qmodel)
            with floating_point(qmodel):
                info["mlp_loss"] = reconstruct_mlps(
                    qmodel, context.fp_model, optim_images, device, options.mlp_iterations, options.batch_size,
                    options.mlp_lr, options.mlp_percentile, options.temperature, 2.0,
                    torch.Generator().manual_seed(context.seed), context.batch_size)
        info.update(calibrate_by_grid_search(
            qmodel, images[:options.calib_size], device, context.batch_size, count=options.search_candidates,
            rounds=options.search_rounds, batch_size=options.search_batch, per_head=options.per_head,
            token_wise=False, input_bits=options.input_bits, reparameterize=options.reparameterize))
        settings = ReconstructionSettings(iterations=options.iterations, batch_size=options.batch_size,
                                          drop_prob=options.drop_prob, temperature=options.temperature)
        if options.iterations:
            info["block_loss"] = reconstruct(
                qmodel, context.fp_model, optim_images, device,
                lambda unit: LogitKL(2.0) if unit.is_head else PerturbationHessian(options.temperature),
                settings, context.seed, context.batch_size)
        return info
