"""Calibrator ``block_recon``: learn quantizer scales block by block.

docs/methods.md, SPDFQ, Calibrator: block reconstruction.

For every transformer block l, in order: minimize ||X_l - X̂_l||² (mean squared error) between the FP
block's output and the quantized block's output over the block's quantizer scales, with Adam
(lr 4e-5, cosine decay to 0, 100 iterations; the paper's). Scales start from min-max (every activation
quantizer is frozen by a min-max pass first) and pass LSQ-style gradients through the rounding
(:mod:`harness.quant.learnable`): the per-tensor activation scales (zero-points stay at their
min-max values) and the per-channel weight scales. Log2 quantizers of the post-softmax map
(``--attn-quantizer log2``) have no scale and are kept as they are.

Choices: the quantized block's input is, by default, the output of the already reconstructed
quantized blocks before it (errors of earlier blocks are compensated; ``quantized_inputs=false``
feeds the FP input instead). The blocks are those :mod:`harness.model.arch` marks: timm's ViT/DeiT/Swin
blocks and, in detection/segmentation backbones, mmdet/mmseg's Swin blocks and ViT encoder layers,
each called with the further arguments its model passes it (a Swin block's feature-map size).
Quantizers outside every block (patch-embedding input and weights, Swin's patch merging, the head;
a detector's neck and heads under ``quantize=all``) keep their min-max values. Rounding is not learned (no AdaRound):
the paper names only the quantizers' parameters. Mini-batches are drawn with the seed. At the end every
scale is a buffer again (:func:`harness.quant.learnable.fix_scales`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from harness.api import BLOCKS, CALIBRATORS, CalibrationContext, Calibrator, progress_bar
from harness.api import at_least, positive
from harness.api.quantizer import (LAYER_INPUT, LAYER_OUTPUT, MinMaxObserver, Target, call_arguments, capture,
                                   fix_scales, is_instrumented_block, keep_scales_positive, learnable_scales,
                                   observe_and_freeze)


@dataclass
class BlockReconOptions:
    """docs/methods.md, SPDFQ, Calibrator: block reconstruction; the paper's values where it gives them."""

    iterations: int = at_least(1, 100)  # paper: 100 iterations per block
    lr: float = positive(4e-5)  # paper: Adam lr 4e-5, cosine decay
    batch_size: int = at_least(1, 32)  # images per iteration (ours; the whole default set of 32)
    quantized_inputs: bool = True  # block input from the quantized model (True) or the FP model
    activations: bool = True  # learn activation scales
    weights: bool = True  # learn per-channel weight scales

    def __post_init__(self) -> None:
        if min(self.iterations, self.batch_size) < 1 or self.lr <= 0:
            raise ValueError("iterations and batch_size must be >= 1 and lr > 0")


@CALIBRATORS.register("block_recon")
class BlockReconstruction(Calibrator):
    """Min-max initialization, then per-block MSE reconstruction of the outputs over quantizer scales."""

    Options = BlockReconOptions
    version = "2"  # 2: reconstructs the blocks of mmdet/mmseg backbones too (version 1 left them at min-max)
    needs = frozenset({BLOCKS})
    smoke_options: ClassVar[dict[str, Any]] = {"iterations": 2}

    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> dict[str, Any]:
        options, images, device = self.options, context.calibration.images, context.device
        observe_and_freeze(qmodel, images, lambda q: MinMaxObserver(), device, context.batch_size)
        blocks = [(name, module) for name, module in qmodel.named_modules() if is_instrumented_block(module)]
        fp_blocks = {name: context.fp_model.get_submodule(name) for name, _ in blocks}
        targets = capture(context.fp_model, images, {name: Target(fp_blocks[name], LAYER_OUTPUT) for name in fp_blocks},
                          device, context.batch_size)
        if not options.quantized_inputs:
            fp_inputs = capture(context.fp_model, images, {n: Target(b, LAYER_INPUT) for n, b in fp_blocks.items()},
                                device, context.batch_size)
        generator = torch.Generator().manual_seed(context.seed)
        for parameter in qmodel.parameters():  # only quantizer scales are learned here
            parameter.requires_grad_(False)
        errors = {}
        for name, block in progress_bar(blocks, desc="block_recon", unit="block", leave=False):
            inputs = (capture(qmodel, images, {name: Target(block, LAYER_INPUT)}, device, context.batch_size)[name]
                      if options.quantized_inputs else fp_inputs[name])
            arguments = call_arguments(qmodel, images[:1], block, device)  # a Swin block of mmdet/mmseg: (H, W)
            errors[name] = self._reconstruct(_Call(block, *arguments), inputs, targets[name], generator)
        fix_scales(qmodel)
        return {"block_mse": errors, "input_source": "quantized" if options.quantized_inputs else "fp"}

    def _reconstruct(self, block: "_Call", inputs: Tensor, targets: Tensor,
                     generator: torch.Generator) -> dict[str, float]:
        """Adam over the block's scales on MSE(block(x̂), X); returns the error before and after."""
        options = self.options
        before = _mse(block, inputs, targets)
        scales = learnable_scales(block.module, activations=options.activations, weights=options.weights)
        if scales:
            optimizer = torch.optim.Adam(scales, lr=options.lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.iterations)
            for _ in range(options.iterations):
                index = torch.randperm(len(inputs), generator=generator)[:options.batch_size].to(inputs.device)
                loss = (block(inputs[index]) - targets[index]).square().mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                keep_scales_positive(scales)
                schedule.step()
        return {"before": before, "after": _mse(block, inputs, targets), "learned_tensors": len(scales)}


class _Call:
    """A block called on its input with the further arguments its model passes it."""

    def __init__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.module, self.args, self.kwargs = module, args, kwargs

    def __call__(self, inputs: Tensor) -> Tensor:
        return self.module(inputs, *self.args, **self.kwargs)


@torch.no_grad()
def _mse(block: _Call, inputs: Tensor, targets: Tensor) -> float:
    return (block(inputs) - targets).square().mean().item()
