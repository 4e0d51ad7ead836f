"""``maskaq`` tuner: MaskAQ's fine-tuning (docs/methods.md, MaskAQ, tuner).

The student learns its weights (per-channel min-max quantized at every forward, straight-through), every
other parameter, and activation quantizers with a learned step and offset (LSQ with a learned zero point,
:class:`harness.api.LearnedOffsetQuantizer`). The loss is the KL of softened logits (T = 5) plus 10 times a
masked SSIM-like distance between the heads' attn·v outputs of teacher and student. SGD with Nesterov
momentum, a cosine per epoch to 1 % of the lr, no step in the first 2 epochs, each batch augmented; every
30 epochs (epoch 0 included) the cell's generator makes a new set against the live student, replacing the
previous one.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from harness.api import (ATTENTION, TUNERS, CalibrationSet, HarnessError, Tuner, TuningContext, at_least, positive,
                         probability, progress_bar, show_losses)
from harness.api.quantizer import learned_offset_quantizers, minmax_weights_ste, restore_quantizers
from harness.api.synthesis import attn_v_probes
from harness.api.training import discrepancy, epoch_cosine, has_classifier
from methods.maskaq.losses import head_output_distance


@dataclass
class MaskAqTunerOptions:
    """docs/methods.md, MaskAQ, tuner. Defaults: what the authors' ``train.sh`` runs (hfutqian/MaskAQ at 3245400,
    its README command), not its configuration file's values, which are overridden or never read."""

    epochs: int = at_least(1, 200)
    batch_size: int = at_least(1, 16)  # train.sh --bs 16
    lr: float = positive(1e-3)  # --lrs 0.001; one group: weights, biases, norms, tokens, steps and offsets
    momentum: float = probability(0.9)
    nesterov: bool = True
    weight_decay: float = at_least(0, 0.0)  # --wd's default
    warmup_epochs: int = at_least(0, 2)  # no optimizer step before this epoch (5 warm-up epochs less 3 for LSQ)
    min_lr_ratio: float = probability(0.01)  # cosine per epoch down to this share of lr, taken at epoch + 1
    temperature: float = positive(5.0)  # --kl_temp
    kd_weight: float = at_least(0, 1.0)
    head_weight: float = at_least(0, 10.0)  # --head_dist_coef's default
    head_mask_ratio: float = probability(0.1)  # patches weighted high in the head-output distance
    head_weight_high: float = at_least(0, 2.0)
    head_weight_low: float = at_least(0, 1.0)
    resynthesis_every: int = at_least(0, 30)  # epochs between fresh sets from the generator; 0: never
    augment: bool = True  # random resized crop, flip, colour jitter, grayscale, blur on every batch
    activation_init: Literal["lsq", "calibrated"] = "lsq"  # LSQ's start on the first batch, or the calibrator's grid
    gradient_scale: float = at_least(0, 1.0)  # γ in g = γ/√(N·Q_P) of the activation steps
    head_gradient_scale: float = at_least(0, 0.01)  # γ of the classifier's input quantizer (--lsq_g_scale)

    def __post_init__(self) -> None:
        if self.activation_init not in ("lsq", "calibrated"):
            raise ValueError(f"activation_init must be lsq or calibrated, got {self.activation_init!r}")


def batch_augmentation(prior, size: int) -> v2.Compose:
    """The authors' fine-tuning augmentation, one draw for the whole batch: RandomResizedCrop, horizontal flip,
    colour jitter (0.8, 0.8, 0.8, 0.2) on pixels with p 0.8, grayscale with p 0.2, Gaussian blur with kernel
    2·⌊⌊0.1·S⌋/2⌋ + 1 and σ ~ U(0.1, 2)."""
    mean, std = torch.tensor(prior.mean), torch.tensor(prior.std)
    kernel = 2 * (int(0.1 * size) // 2) + 1
    return v2.Compose([
        v2.RandomResizedCrop(size=size, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.Compose([v2.Normalize((-mean / std).tolist(), (1 / std).tolist()),
                                    v2.ColorJitter(0.8, 0.8, 0.8, 0.2),
                                    v2.Normalize(mean.tolist(), std.tolist())])], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.GaussianBlur(kernel_size=kernel, sigma=(0.1, 2.0)),
    ])


def tuning_losses(teacher: nn.Module, student: nn.Module, images: Tensor, options: MaskAqTunerOptions,
                  prefix: int) -> dict[str, Tensor]:
    """KD and head-output distance of one batch (both models see the same images)."""
    with torch.no_grad(), attn_v_probes(teacher) as probes:
        target = teacher(images)
        teacher_heads = [probe.value for probe in probes]
    with attn_v_probes(student) as probes:
        output = student(images)
        student_heads = [probe.value for probe in probes]
    return {"kd": discrepancy(target, output, "kl", options.temperature),
            "head": head_output_distance(teacher_heads, student_heads, prefix, options.head_mask_ratio,
                                         options.head_weight_high, options.head_weight_low)}


def classifier_input(model: nn.Module) -> str | None:
    """The name of the quantizer at the classifier's input, where the authors' gradient scale 0.01 applies."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    for name, module in model.named_modules():
        if module is head:
            return f"{name}.dfq_points.in"
    return None


@TUNERS.register("maskaq")
class MaskAqTuner(Tuner):
    """MaskAQ's fine-tuning: LSQ activations with learned offsets, min-max weights, KD + head-output SSIM,
    periodic re-synthesis against the live student."""

    Options = MaskAqTunerOptions
    needs = frozenset({ATTENTION})  # the head-output distance reads every block's attn·v
    smoke_options: ClassVar[dict] = {"epochs": 3, "warmup_epochs": 1, "resynthesis_every": 2, "batch_size": 4}

    def tune(self, qmodel: nn.Module, context: TuningContext) -> dict[str, Any]:
        options, device = self.options, context.device
        teacher, student = context.fp_model, qmodel
        if not has_classifier(teacher):
            raise HarnessError("tuner 'maskaq' distils class logits; this model has no classifier")
        prefix = getattr(student, "num_prefix_tokens", 0)
        student.eval()  # the authors' teacher and student both run in eval mode
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # the augmentations draw from the global generator
            torch.manual_seed(context.seed)
            order = torch.Generator().manual_seed(context.seed)
            gammas = {name: options.head_gradient_scale for name in [classifier_input(student)] if name}
            swapped = learned_offset_quantizers(student, options.gradient_scale, gammas)
            calibration = context.calibration
            try:
                with minmax_weights_ste(student):
                    self._start_quantizers(student, swapped, calibration.images[:options.batch_size].to(device))
                    parameters = [p for p in student.parameters()]
                    for parameter in parameters:
                        parameter.requires_grad_(True)
                    info = self._train(teacher, student, parameters, calibration, context, order, prefix)
            finally:
                restore_quantizers(swapped)
                for parameter in student.parameters():
                    parameter.requires_grad_(False)
        info["seconds"] = round(time.perf_counter() - started, 3)
        return info

    def _start_quantizers(self, student: nn.Module, swapped: dict, images: Tensor) -> None:
        """LSQ's start on the first batch (``lsq``), or the calibrated grid with N and the signedness of that
        batch (``calibrated``); either way each quantizer sees its input through the quantizers before it."""
        if self.options.activation_init == "calibrated":
            for quantizer in swapped.values():
                _, _, original = quantizer.original
                quantizer.grid = (original.scale, original.zero_point)
        with torch.no_grad():
            student(images)

    def _train(self, teacher: nn.Module, student: nn.Module, parameters: list[nn.Parameter],
               calibration: CalibrationSet, context: TuningContext, order: torch.Generator,
               prefix: int) -> dict[str, Any]:
        options, device = self.options, context.device
        optimizer = torch.optim.SGD(parameters, lr=options.lr, momentum=options.momentum,
                                    weight_decay=options.weight_decay, nesterov=options.nesterov)
        prior = context.prior
        augmentation = batch_augmentation(prior, prior.input_size[-1]) if options.augment and prior else None
        images, rounds, losses = calibration.images, 0, []
        steps = (options.epochs - min(options.warmup_epochs, options.epochs)) * math.ceil(len(images) / options.batch_size)
        bar = progress_bar(total=steps, desc="maskaq tune", leave=False)
        try:
            for epoch in range(options.epochs):
                if options.resynthesis_every and epoch % options.resynthesis_every == 0 and context.synthesize:
                    rounds += 1  # round r >= 1 is seeded apart from the cached set (docs/methods.md, Fine-tuning)
                    images = context.synthesize(student, rounds).images
                if epoch < options.warmup_epochs:
                    continue  # the authors' warm-up epochs compute gradients and discard them
                for group in optimizer.param_groups:
                    group["lr"] = options.lr * epoch_cosine(epoch, options.epochs, options.min_lr_ratio)
                for batch in torch.randperm(len(images), generator=order).split(options.batch_size):
                    x = images[batch].to(device)
                    if augmentation is not None:
                        x = augmentation(x)
                    terms = tuning_losses(teacher, student, x, options, prefix)
                    loss = options.kd_weight * terms["kd"] + options.head_weight * terms["head"]
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                    show_losses(bar, bar.n, {"loss": loss.detach()}, spec=".4g")
                    bar.update()
        finally:
            bar.close()
        return {"steps": len(losses), "synthesis_rounds": rounds, "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None}
