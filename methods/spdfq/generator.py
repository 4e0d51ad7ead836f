"""SPDFQ's generator (spec methods.md, SPDFQ): L_G = α1·L_APA + L_SL + 0.05·L_TV over B images from N(0, 1).

Each part is a boolean option, so the paper's ablation is a grid (``--gen-opt spdfq.apa=false``):
``apa`` (attention priors, :mod:`harness.priors.attention_prior`), ``msr`` (crops with their own
targets, :mod:`methods.spdfq.semantics`), ``sl`` (soft targets; off: one-hot cross-entropy). The
classification term (whole image, plus the MSR crops when on) is always there.

Choices the spec leaves open, all options: Adam as PSAQ-ViT (lr 0.20 ViT/DeiT, 0.25 Swin, betas
(0.5, 0.9)) with one warm-up + cosine round over the 1000 iterations; no roll/flip jitter (a shifted
image would misplace the attention priors, which live on the patch grid); L_TV = |TV - v| with
PSAQ-ViT's v and its B·H·W scaling. α1 (``apa_weight``): None picks, on the first iteration, the power
of ten nearest L_SL / L_APA, clipped to the spec's range [1, 1e5], so both terms start at similar size;
the value used is recorded. All draws come from one generator seeded with the seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.arch import SUPPORTED, is_window_attention
from harness.errors import HarnessError
from harness.method import CalibrationSet, GenerationContext, Generator, ImageCountOptions
from harness.priors.attention_prior import (aligned_blocks, attention_alignment_loss, attention_probes,
                                            gaussian_mixture_priors, patch_attention)
from harness.priors.patch_similarity import Probe
from harness.priors.synthesis import (clamp_pixels, pixel_bounds, pixel_optimizer, synthesis_lr, total_variation,
                                      tv_target, warmup_cosine_lr)
from harness.progress import progress_bar, show_losses
from harness.registry import GENERATORS
from harness.support import ATTENTION, CLASSES
from methods.spdfq.semantics import cells_per_side, crop_and_resize, msr_regions, soft_cross_entropy, soft_targets

APA_WEIGHT_RANGE = (1.0, 1e5)  # spec SPDFQ: α1 is per model, 1 to 1e5


@dataclass
class SPDFQOptions(ImageCountOptions):
    """Spec methods.md, SPDFQ; ``num_images`` (32) comes from ImageCountOptions."""

    apa: bool = True  # Attention Priors Alignment
    msr: bool = True  # Multi-Semantic Reinforcement
    sl: bool = True  # soft-label learning (off: one-hot cross-entropy)
    batch_size: int = 32  # spec: B = 32
    iterations: int = 1000  # spec: 1000 Adam iterations
    warmup: int = 100  # linear warm-up before the cosine decay (PSAQ-ViT's schedule; ours for SPDFQ)
    lr: float | None = None  # None: 0.20 ViT/DeiT, 0.25 Swin (PSAQ-ViT's Adam)
    betas: tuple[float, float] = (0.5, 0.9)  # PSAQ-ViT's Adam
    eps: float = 1e-8
    apa_weight: float | None = None  # α1; None: power of ten balancing L_APA with L_SL at the start
    num_modes: int = 5  # spec APA: K = 5 Gaussians per prior
    width_range: tuple[float, float] = (0.05, 0.25)  # prior σ / grid side (unpublished; ours)
    msr_max_patches: int = 4  # spec MSR: m in {1..4}, K_MSR = 4
    target_logit_range: tuple[float, float] = (5.0, 10.0)  # spec SL: target logits ~ U(5, 10)
    tv_weight: float = 0.05  # spec: 0.05·L_TV
    tv_target_range: tuple[float, float] = (2500.0, 3000.0)  # PSAQ-ViT's v for B = 32 at 224 px

    def __post_init__(self) -> None:
        for name in ("betas", "width_range", "target_logit_range", "tv_target_range"):  # YAML gives lists
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        if min(self.num_images, self.batch_size, self.iterations, self.num_modes, self.msr_max_patches) < 1:
            raise ValueError("num_images, batch_size, iterations, num_modes and msr_max_patches must be >= 1")
        if not 0 <= self.warmup <= self.iterations:
            raise ValueError(f"warmup must be in [0, iterations], got {self.warmup}")
        if (self.lr is not None and self.lr <= 0) or (self.apa_weight is not None and self.apa_weight < 0):
            raise ValueError("lr must be positive and apa_weight >= 0 (or None for the defaults)")
        if not 0 < self.width_range[0] <= self.width_range[1]:
            raise ValueError(f"width_range must be 0 < low <= high, got {self.width_range}")


@GENERATORS.register("spdfq")
class SPDFQGenerator(Generator):
    """SPDFQ synthesis: attention priors, multi-semantic crops and soft labels, switchable for ablations."""

    Options = SPDFQOptions
    needs = frozenset({CLASSES, ATTENTION})  # targets of SL and MSR; post-softmax maps of APA
    smoke_options: ClassVar[dict[str, Any]] = {"iterations": 2, "warmup": 1, "num_images": 4}

    def generate(self, context: GenerationContext) -> CalibrationSet:
        if not context.prior.num_classes:
            raise HarnessError(f"spdfq needs class logits for its soft-label and MSR targets, and {context.model_name!r} "
                               "came without classes; a detection or segmentation task gives them through its class "
                               "source (--task-opt prior_classifier=FILE)")
        options, model = self.options, context.model
        generator = torch.Generator().manual_seed(context.seed)
        lr = options.lr or synthesis_lr(model)  # PSAQ-ViT's Adam lr: SPDFQ gives none
        images, labels, reports, alpha = [], [], [], options.apa_weight
        for start in range(0, options.num_images, options.batch_size):
            size = min(options.batch_size, options.num_images - start)
            batch, batch_labels, report = self._synthesize(context, size, lr, alpha, generator,
                                                           f"spdfq {start // options.batch_size + 1}")
            alpha = report["apa_weight"]  # the first batch's α1 holds for the model's whole set
            images.append(batch)
            labels.append(batch_labels)
            reports.append(report)
        parts = [name for name in ("apa", "msr", "sl") if getattr(options, name)]
        return CalibrationSet(images=torch.cat(images), labels=torch.cat(labels), info={
            "source": f"SPDFQ synthesis ({'+'.join(parts) or 'no parts'})", "lr": lr, "batches": reports})

    def _synthesize(self, context: GenerationContext, size: int, lr: float, alpha: float | None,
                    generator: torch.Generator, description: str) -> tuple[Tensor, Tensor, dict[str, Any]]:
        options, prior, model, device = self.options, context.prior, context.model, context.device
        channels, height, width = prior.input_size
        classes, cells = prior.num_classes, cells_per_side(options.msr_max_patches) ** 2
        images = torch.randn(size, channels, height, width, generator=generator).to(device)
        labels = torch.randint(classes, (size,), generator=generator)
        cell_labels = torch.randint(classes, (size, cells), generator=generator)  # MSR: one target per cell
        targets, cell_targets = (self._targets(y, classes, generator).to(device) for y in (labels, cell_labels))
        tv_goal = tv_target((size, channels, height, width), generator, *options.tv_target_range)
        images.requires_grad_(True)
        optimizer = pixel_optimizer(images, lr, options.betas, options.eps)
        bounds = pixel_bounds(prior, images)
        priors: list[Tensor] | None = None
        bar = progress_bar(range(options.iterations), desc=description, leave=False)
        with attention_probes(model) as probes:
            if not probes:
                raise HarnessError(f"spdfq found no attention it can probe; supported: {SUPPORTED}")
            blocks = aligned_blocks(len(probes))
            for step in bar:
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine_lr(step, lr, options.iterations, options.warmup)
                terms = {"ce": soft_cross_entropy(model(images), targets),
                         "tv": (total_variation(images) - tv_goal).abs()}
                if options.apa:
                    attentions = [self._attention(model, *probes[index]) for index, _ in blocks]
                    if priors is None:  # spec: priors drawn once per image, at the shapes the model gives
                        priors = [self._priors(model, probes[index][0], attention.shape, generator).to(device)
                                  for (index, _), attention in zip(blocks, attentions)]
                    terms["apa"] = attention_alignment_loss(attentions, priors, [w for _, w in blocks])
                if options.msr:
                    regions = msr_regions(size, height, width, options.msr_max_patches, generator)
                    crop_targets = torch.stack([cell_targets[r.image, r.cell] for r in regions])
                    terms["msr"] = soft_cross_entropy(model(crop_and_resize(images, regions)), crop_targets)
                loss = terms["ce"] + terms.get("msr", 0) + options.tv_weight * terms["tv"]
                if options.apa:
                    alpha = _balancing_weight(terms) if alpha is None else alpha
                    loss = loss + alpha * terms["apa"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    images.copy_(clamp_pixels(images, bounds))
                show_losses(bar, step, terms, spec=".3g")
        report = {"tv_target": tv_goal, "apa_weight": alpha,
                  "final_loss": {name: value.item() for name, value in terms.items()}}
        return images.detach(), labels, report

    def _targets(self, labels: Tensor, classes: int, generator: torch.Generator) -> Tensor:
        """Spec SL: soft targets; with ``sl`` off, one-hot ones (the soft CE is then plain CE)."""
        if self.options.sl:
            return soft_targets(labels, classes, generator, self.options.target_logit_range)
        return F.one_hot(labels, classes).float()

    def _priors(self, model: nn.Module, attention: nn.Module, shape: torch.Size,
                generator: torch.Generator) -> Tensor:
        """Spec APA: one prior per (image, head) of an aligned block; Swin: per window, over the window grid."""
        maps, heads, patches = shape
        is_swin = is_window_attention(attention)
        grid = tuple(attention.window_size if is_swin else model.patch_embed.grid_size)
        if grid[0] * grid[1] != patches:
            raise HarnessError(f"spdfq: attention over {patches} patches does not match the patch grid {grid}")
        options = self.options
        drawn, _ = gaussian_mixture_priors(maps * heads, grid, generator, options.num_modes, options.width_range)
        return drawn.view(maps, heads, patches)

    @staticmethod
    def _attention(model: nn.Module, attention: nn.Module, probe: Probe) -> Tensor:
        """Spec APA: class-token row for ViT/DeiT, query-averaged window attention for Swin."""
        is_swin = is_window_attention(attention)
        return patch_attention(probe.value, getattr(model, "num_prefix_tokens", 1), query_average=is_swin)


def _balancing_weight(terms: dict[str, Tensor]) -> float:
    """α1 default: the power of ten nearest L_SL / L_APA at the first iteration, in [1, 1e5]."""
    if terms["apa"].item() <= 0:
        return 1.0
    ratio = (terms["ce"] + terms.get("msr", 0)).item() / terms["apa"].item()
    return float(min(max(10 ** round(math.log10(ratio)), APA_WEIGHT_RANGE[0]), APA_WEIGHT_RANGE[1]))
