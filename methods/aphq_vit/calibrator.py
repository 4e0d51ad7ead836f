"""Calibrator ``aphq``: APHQ-ViT's pipeline (docs/methods.md, APHQ-ViT).

1. MLP reconstruction (option ``mlp_reconstruction``): every block's MLP gets ReLU in place of GELU and its
   norm2 / fc1 / fc2 learn to give the FP model's MLP output (:func:`harness.quant.reconstruction.reconstruct_mlps`);
   the quantized model keeps ReLU from then on.
2. Calibration: every quantizer searched on a grid by output MSE over the first ``calib_size`` images
   (:func:`harness.quant.grid_search.calibrate_by_grid_search`), per head for the attention matmuls.
3. Block reconstruction with AdaRound and QDrop under the average-perturbation-Hessian loss
   (:mod:`harness.quant.reconstruction`) on the first ``optim_size`` images; a quantized detector's FPN neck
   under the output MSE, the head under the logits' KL divergence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from harness.api import BLOCKS, CALIBRATORS, OBJECTIVE, CalibrationContext, Calibrator
from harness.api import at_least, positive, probability
from harness.api.quantizer import (LogitKL, OutputMSE, PerturbationHessian, SearchReconstructOptions, floating_point,
                                   reconstruct, reconstruct_mlps, relu_mlps)


@dataclass
class APHQOptions(SearchReconstructOptions):
    """The authors' defaults, configs/4bit/best.py and their code (docs/methods.md, APHQ-ViT); the search and
    reconstruction options are those FIMA-Q shares (harness.quant.search_reconstruct)."""

    mlp_reconstruction: bool = True  # --reconstruct-mlp, GELU → ReLU (their README's command)
    mlp_iterations: int = at_least(0, 20000)  # per block
    mlp_lr: float = positive(4e-5)
    mlp_percentile: float = probability(0.98)  # pct: fc2's input clip for the quantized term


@CALIBRATORS.register("aphq")
class APHQCalibrator(Calibrator):
    """APHQ-ViT: MLP reconstruction (ReLU), grid-searched uniform quantizers, AdaRound+QDrop under the
    average perturbation Hessian."""

    Options = APHQOptions
    version = "1"
    needs = frozenset({BLOCKS, OBJECTIVE})  # its Hessian is the task objective's (docs/methods.md)
    smoke_options: ClassVar[dict[str, Any]] = {"iterations": 2, "mlp_iterations": 2, "search_candidates": 16,
                                               "search_rounds": 1}

    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> dict[str, Any]:
        options, images, device = self.options, context.calibration.images, context.device
        optim_images = images[:options.optim_size]
        output = context.output_objective(options.temperature)
        info: dict[str, Any] = {}
        if options.mlp_reconstruction:
            relu_mlps(qmodel)
            with floating_point(qmodel):
                info["mlp_loss"] = reconstruct_mlps(
                    qmodel, context.fp_model, optim_images, device, options.mlp_iterations, options.batch_size,
                    options.mlp_lr, options.mlp_percentile, output, 2.0,
                    torch.Generator().manual_seed(context.seed), context.batch_size)
        info.update(options.search(qmodel, images, device, context.batch_size, token_wise=False))
        if options.iterations:
            info["block_loss"] = reconstruct(
                qmodel, context.fp_model, optim_images, device,
                lambda unit: LogitKL(2.0) if unit.is_head else OutputMSE(2.0) if unit.is_neck else PerturbationHessian(),
                options.reconstruction(), context.seed, context.batch_size, output=output)
        return info
