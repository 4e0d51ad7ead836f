"""``lsq_kd``: fine-tuning a calibrated model on its calibration images, distilling from the FP model
(docs/methods.md, Fine-tuning).

Learned step sizes (LSQ): every quantizer scale the calibrator fixed becomes a parameter, initialized
at the calibrated value, trained through the straight-through estimator with LSQ's gradient scale
(:func:`harness.api.lsq_gradient_scale`); the weights of the quantized layers train through the same
estimator. The loss is the teacher-student discrepancy (KL of softened logits for classifiers, feature
MSE for backbones) plus, where the calibration set carries labels, cross-entropy against them. SGD with
(Nesterov) momentum and a per-epoch cosine decay, batch by batch over shuffled epochs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import TUNERS, Tuner, TuningContext, at_least, positive, probability, progress_bar, show_losses
from harness.api.quantizer import fix_scales, learnable_scales, lsq_gradient_scale, weight_quantized_layers
from harness.api.training import DISCREPANCIES, discrepancy, epoch_cosine, mean_discrepancy, resolve_discrepancy


@dataclass
class LsqKdOptions:
    """docs/methods.md, Fine-tuning. Defaults: what MaskAQ's code runs for DeiT-S (hfutqian/MaskAQ at 3245400,
    its README command): where its configuration file says otherwise (batch 32, weight decay 1e-4, 100
    epochs, T 20), the file's value is overridden by the command line or never read, and the run uses these."""

    epochs: int = at_least(1, 200)  # passes over the images (MaskAQ: 200; the configuration file's 100 is not read)
    batch_size: int = at_least(1, 16)  # MaskAQ's train.sh (--bs 16) over the configuration file's 32
    weight_lr: float = positive(1e-3)  # MaskAQ's README command (--lrs 0.001)
    scale_lr: float = positive(1e-3)  # MaskAQ trains every parameter in one group, step sizes included
    momentum: float = probability(0.9)
    nesterov: bool = True  # MaskAQ's SGD
    weight_decay: float = at_least(0, 0.0)  # MaskAQ runs 0.0 (--wd's default); the file's 1e-4 is not read
    # epochs at the start in which no step is taken (MaskAQ: its 5 warm-up epochs less 3 for LSQ activations);
    # the schedule advances through them, as MaskAQ's does
    warmup_epochs: int = at_least(0, 2)
    min_lr_ratio: float = probability(0.01)  # cosine per epoch down to this share of the learning rate (MaskAQ: 0.01)
    temperature: float = positive(5.0)  # KL softening, Hinton's T² scaling (MaskAQ's --kl_temp 5)
    kd_weight: float = at_least(0, 1.0)  # weight of the teacher-student discrepancy
    label_weight: float = at_least(0, 0.0)  # cross-entropy on the set's labels, where it has them (MaskAQ: off)
    discrepancy: Literal["auto", "kl", "mse"] = "auto"  # auto: KL for classifiers, MSE of features for backbones
    train: Literal["quantized", "scales"] = "quantized"  # quantized: weights of quantized layers and step sizes

    def __post_init__(self) -> None:
        if self.discrepancy not in DISCREPANCIES:
            raise ValueError(f"discrepancy must be one of {', '.join(DISCREPANCIES)}, got {self.discrepancy!r}")
        if self.train not in ("quantized", "scales"):
            raise ValueError(f"train must be quantized or scales, got {self.train!r}")


@TUNERS.register("lsq_kd")
class LsqKdTuner(Tuner):
    """Learned step sizes and weights, distilled from the FP model on the calibration images (LSQ + KD)."""

    Options = LsqKdOptions
    smoke_options: ClassVar[dict] = {"epochs": 3, "warmup_epochs": 1}

    def tune(self, qmodel: nn.Module, context: TuningContext) -> dict[str, Any]:
        options, device = self.options, context.device
        teacher, student = context.backbone(context.fp_model), context.backbone(qmodel)
        generator = torch.Generator().manual_seed(context.seed)  # the batch order
        kind = resolve_discrepancy(options.discrepancy, teacher)
        images = context.calibration.images.to(device)
        labels = context.calibration.labels.to(device) if context.calibration.labels is not None else None
        qmodel.eval()  # no dropout / drop-path: the loss is a function of the parameters
        started = time.perf_counter()
        before = mean_discrepancy(teacher, student, images, kind, options.temperature, options.batch_size)
        scales = learnable_scales(qmodel)
        weights = [] if options.train == "scales" else [
            module.weight for _, module in weight_quantized_layers(qmodel) if module.weight_bits]
        for parameter in weights:
            parameter.requires_grad_(True)  # the runner's FP model is frozen, and the student is its deep copy
        optimizer = torch.optim.SGD([{"params": weights, "lr": options.weight_lr, "weight_decay": options.weight_decay},
                                     {"params": scales, "lr": options.scale_lr, "weight_decay": 0.0}],
                                    momentum=options.momentum, nesterov=options.nesterov)
        batches = math.ceil(len(images) / options.batch_size)
        steps = (options.epochs - min(options.warmup_epochs, options.epochs)) * batches
        hooks = lsq_gradient_scale(qmodel)
        losses = []
        bar = progress_bar(total=steps, desc="lsq_kd", leave=False)
        try:
            for epoch in range(options.warmup_epochs, options.epochs):
                for group, base in zip(optimizer.param_groups, (options.weight_lr, options.scale_lr)):
                    group["lr"] = base * epoch_cosine(epoch, options.epochs, options.min_lr_ratio)
                for batch in torch.randperm(len(images), generator=generator).split(options.batch_size):
                    loss = self._loss(teacher, student, images[batch.to(device)],
                                      None if labels is None else labels[batch.to(device)], kind)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        for scale in scales:
                            scale.clamp_(min=torch.finfo(scale.dtype).tiny)  # a step through zero would mirror the grid
                    losses.append(loss.item())
                    show_losses(bar, bar.n, {"loss": loss.detach()}, spec=".4g")
                    bar.update()
        finally:
            bar.close()
            for hook in hooks:
                hook.remove()
        fix_scales(qmodel)
        for parameter in qmodel.parameters():
            parameter.requires_grad_(False)
        after = mean_discrepancy(teacher, student, images, kind, options.temperature, options.batch_size)
        return {"discrepancy": kind, "steps": steps, "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "discrepancy_before": before, "discrepancy_after": after,
                "seconds": round(time.perf_counter() - started, 3)}

    def _loss(self, teacher: nn.Module, student: nn.Module, images: Tensor, labels: Tensor | None,
              kind: Literal["kl", "mse"]) -> Tensor:
        options = self.options
        with torch.no_grad():
            target = teacher(images)
        output = student(images)
        loss = options.kd_weight * discrepancy(target, output, kind, options.temperature)
        if labels is not None and options.label_weight and kind == "kl":
            loss = loss + options.label_weight * F.cross_entropy(output, labels)
        return loss
