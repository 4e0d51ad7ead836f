"""``maskaq`` generator: images optimized so that the FP model's attention is diverse across heads and patches
and, given the quantized model being fine-tuned, so that the quantized model's attention agrees with the FP
model's on the informative patches (docs/methods.md, MaskAQ).

Without a quantized model (the cell's first, cached set) only the FP-only terms act; the ``maskaq`` tuner asks
for fresh sets against its live student, which adds the masked alignment term.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import (ATTENTION, CLASS_TOKEN, GENERATORS, CalibrationSet, GenerationContext, Generator, HarnessError,
                         Range, at_least, positive, probability, progress_bar, ranged, show_losses)
from harness.api.synthesis import attention_logit_probes, pixel_bounds
from methods.maskaq.losses import (Drop, drop_tokens, entropy_rows, head_similarity, informative_mask, mask_ratio,
                                   masked_alignment, similarity_entropy, total_variation)


@dataclass
class MaskAqOptions:
    """docs/methods.md, MaskAQ, generator. Defaults: the authors' ``generate`` as ``trainer.py`` calls it
    (hfutqian/MaskAQ at 3245400), except ``num_images`` (theirs: 10 000 per round)."""

    num_images: int = at_least(1, 32)
    batch_size: int = at_least(1, 16)  # their fine-tuning batch size (train.sh --bs 16)
    iterations: int = at_least(1, 2000)
    lr: float = positive(0.1)  # AdamW on the pixels
    betas: tuple[float, float] = ranged(Range(low=0, high=1, high_open=True), (0.9, 0.999))
    eps: float = positive(1e-8)
    weight_decay: float = at_least(0, 1e-6)
    min_lr: float = at_least(0, 0.001)  # cosine annealing over the iterations down to this
    jitter: tuple[int, int] = at_least(0, (8, 16))  # roll range in pixels, first half / second half of the iterations
    noise_std: float = at_least(0, 0.5)  # per image and channel offset, amplitude decaying over the iterations
    jitter_mean: float = at_least(0, 1.0)  # (x - m) / s, m ~ U(-jitter_mean, jitter_mean)
    jitter_log_std: float = at_least(0, 1.0)  # s = exp(U(-jitter_log_std, jitter_log_std))
    similarity_weight: float = at_least(0, 1.0)  # inter-head SSIM of the FP model's logits
    class_weight: float = at_least(0, 1.0)  # cross-entropy against random labels (none on backbones)
    tv_weight: float = at_least(0, 2.5e-5)
    alignment_weight: float = at_least(0, 0.1)  # masked FP/quantized logit L1 (with a quantized model only)
    entropy_weight: float = at_least(0, 1.0)  # similarity entropy of the FP model's patch logits
    mask_ratio: tuple[float, float] = ranged(Range(low=0, high=1, low_open=True), (0.5, 0.1))  # share of patches in the mask, first and last iteration
    mask_drop: float = probability(0.3)  # share of the masked patches dropped at random at every iteration
    entropy_rows: int = at_least(1, 64)  # patch rows sampled per block and image for the entropy

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # records and YAML give lists
        self.jitter = tuple(int(v) for v in self.jitter)
        self.mask_ratio = tuple(float(v) for v in self.mask_ratio)
        if len(self.mask_ratio) != 2 or not all(0 < v <= 1 for v in self.mask_ratio):
            raise ValueError(f"mask_ratio must be two values in (0, 1], got {self.mask_ratio}")
        if len(self.jitter) != 2 or min(self.jitter) < 0:
            raise ValueError(f"jitter must be >= 0, got {self.jitter}")


@dataclass
class StepDraws:
    """One iteration's random draws: the roll (rows, columns), the noise offset and the colour jitter, each
    (B, C, 1, 1); how the mask drops patches and which rows the entropy samples."""

    shift: tuple[int, int]
    noise: Tensor
    jitter_mean: Tensor
    jitter_std: Tensor
    drop: Drop
    rows: Callable[[int, int, int], Tensor | None]  # (blocks, images, patches) -> the sampled rows, None: all


def augment(images: Tensor, draws: StepDraws) -> Tensor:
    """Roll, add the noise offset, then colour-jitter: (roll(x) + n - m) / s."""
    rolled = torch.roll(images, shifts=draws.shift, dims=(2, 3))
    return (rolled + draws.noise - draws.jitter_mean) / draws.jitter_std


def loss_terms(fp_model: nn.Module, quantized_model: nn.Module | None, images: Tensor, labels: Tensor | None,
               draws: StepDraws, ratio: float, prefix: int) -> tuple[dict[str, Tensor], Tensor]:
    """Every term of one iteration on ``images`` (un-augmented: TV reads them) and the top-k mask before the drop.
    Both models see the same augmented batch."""
    jittered = augment(images, draws)
    with attention_logit_probes(fp_model) as fp_probes:
        output = fp_model(jittered)
        fp_logits = [probe.value for probe in fp_probes]
    terms = {"similarity": head_similarity(fp_logits, prefix),
             "tv": total_variation(images),
             "entropy": similarity_entropy(fp_logits, draws.rows(len(fp_logits), len(images), fp_logits[0].shape[-1] - prefix),
                                           prefix)}
    if labels is not None:
        terms["class"] = F.cross_entropy(output, labels)
    mask = informative_mask(fp_logits, ratio, prefix)
    if quantized_model is not None:
        with attention_logit_probes(quantized_model) as quantized_probes:
            quantized_model(jittered)
            quantized_logits = [probe.value for probe in quantized_probes]
        terms["alignment"] = masked_alignment(fp_logits, quantized_logits, draws.drop(mask), prefix)
    return terms, mask


def pixel_adamw(images: Tensor, options: MaskAqOptions) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW on the pixels and its cosine annealing over the iterations down to ``min_lr``."""
    optimizer = torch.optim.AdamW([images], lr=options.lr, betas=options.betas, eps=options.eps,
                                  weight_decay=options.weight_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, options.iterations, options.min_lr)


def synthesis_step(fp_model: nn.Module, quantized_model: nn.Module | None, images: Tensor, labels: Tensor | None,
                   draws: StepDraws, ratio: float, prefix: int, weights: dict[str, float], optimizer: torch.optim.Optimizer,
                   schedule: Any, bounds: tuple[Tensor, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """One iteration: the weighted terms' gradient w.r.t. the pixels only (the models' parameters get none), an
    AdamW step, the schedule's step, the clamp to the pixel range. Returns the terms and their weighted sum."""
    terms, _ = loss_terms(fp_model, quantized_model, images, labels, draws, ratio, prefix)
    total = sum(weights[name] * term for name, term in terms.items())
    images.grad, = torch.autograd.grad(total, [images])
    optimizer.step()
    schedule.step()
    with torch.no_grad():
        images.copy_(torch.clamp(images, *bounds))
    return terms, total


@GENERATORS.register("maskaq")
class MaskAqGenerator(Generator):
    """Pixels optimized with AdamW for inter-head similarity, class, smoothness, patch-similarity entropy and,
    against a quantized model, masked attention alignment (MaskAQ)."""

    Options = MaskAqOptions
    needs = frozenset({ATTENTION, CLASS_TOKEN})
    smoke_options: ClassVar[dict] = {"num_images": 4, "batch_size": 2, "iterations": 3}

    def weights(self) -> dict[str, float]:
        o = self.options
        return {"similarity": o.similarity_weight, "class": o.class_weight, "tv": o.tv_weight,
                "alignment": o.alignment_weight, "entropy": o.entropy_weight}

    def generate(self, context: GenerationContext) -> CalibrationSet:
        options, device = self.options, context.device
        prefix = getattr(context.model, "num_prefix_tokens", 0)
        if prefix < 1:
            raise HarnessError("generator 'maskaq' reads the class token's attention row; "
                               f"{context.model_name} has no class token")
        generator = torch.Generator().manual_seed(context.seed)
        classes = context.prior.num_classes
        batches, last = [], {}
        labels_all = []
        for start in range(0, options.num_images, options.batch_size):
            size = min(options.batch_size, options.num_images - start)
            images, labels, last = self._batch(context, size, classes, generator, prefix, device)
            batches.append(images.cpu())
            if labels is not None:
                labels_all.append(labels.cpu())
        info: dict[str, Any] = {"against_quantized_model": context.quantized_model is not None,
                                "last_losses": {name: round(value, 6) for name, value in last.items()}}
        return CalibrationSet(images=torch.cat(batches), labels=torch.cat(labels_all) if labels_all else None,
                              info=info)

    def _batch(self, context: GenerationContext, size: int, classes: int | None, generator: torch.Generator,
               prefix: int, device: torch.device) -> tuple[Tensor, Tensor | None, dict[str, float]]:
        options = self.options
        channels, height, width = context.prior.input_size
        images = torch.randn(size, channels, height, width, generator=generator).to(device).requires_grad_(True)
        labels = torch.randint(classes, (size,), generator=generator).to(device) if classes else None
        optimizer, schedule = pixel_adamw(images, options)
        bounds = pixel_bounds(context.prior, images)
        weights = self.weights()
        values: dict[str, float] = {}
        bar = progress_bar(total=options.iterations, desc="maskaq", leave=False)
        try:
            for iteration in range(options.iterations):
                draws = self.draw(iteration, size, channels, generator, device)
                ratio = mask_ratio(iteration, options.iterations, *options.mask_ratio)
                previous = images.detach().clone()
                terms, total = synthesis_step(context.model, context.quantized_model, images, labels, draws, ratio,
                                              prefix, weights, optimizer, schedule, bounds)
                if not torch.isfinite(images).all():  # the authors' code drops such a batch; here it stops early
                    with torch.no_grad():
                        images.copy_(previous)
                    break
                values = {name: term.item() for name, term in terms.items()}
                show_losses(bar, iteration, {"loss": total.detach()}, spec=".4g")
                bar.update()
        finally:
            bar.close()
        return images.detach(), labels, values

    def draw(self, iteration: int, size: int, channels: int, generator: torch.Generator,
             device: torch.device) -> StepDraws:
        """The iteration's draws from the seeded generator. The noise amplitude follows the authors'
        ``GaussianNoise``: 0.5·r/T with r counting down from T - 2, wrapping to T - 1 on the last iteration."""
        options = self.options
        span = options.jitter[0] if iteration < options.iterations / 2 else options.jitter[1]
        shift = tuple(int(v) for v in torch.randint(-span, span + 1, (2,), generator=generator))
        remaining = (options.iterations - 2 - iteration) % options.iterations
        noise = torch.randn(size, channels, 1, 1, generator=generator) * remaining * options.noise_std / options.iterations
        mean = (torch.rand(size, channels, 1, 1, generator=generator) - 0.5) * 2 * options.jitter_mean
        std = ((torch.rand(size, channels, 1, 1, generator=generator) - 0.5) * 2 * options.jitter_log_std).exp()
        return StepDraws(shift=shift, noise=noise.to(device), jitter_mean=mean.to(device), jitter_std=std.to(device),
                         drop=lambda mask: drop_tokens(mask, options.mask_drop, generator),
                         rows=lambda layers, images, patches: entropy_rows(layers, images, patches, options.entropy_rows,
                                                                          generator))
