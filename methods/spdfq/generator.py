"""SPDFQ's generator (docs/methods.md, SPDFQ): L_G = α1·L_APA + L_SL + 0.05·L_TV over B images from N(0, 1).

Each part is a boolean option, so the paper's ablation is a grid (``--gen-opt spdfq.apa=false``):
``apa`` (attention priors, :mod:`harness.priors.attention_prior`), ``msr`` (crops with their own
targets, :mod:`methods.spdfq.semantics`), ``sl`` (soft targets; off: one-hot cross-entropy). The
classification term (whole image, plus the MSR crops when on) is always there.

Choices the paper leaves open, all options: Adam as PSAQ-ViT (lr 0.20 ViT/DeiT, 0.25 Swin, betas
(0.5, 0.9)) with one warm-up + cosine round over the 1000 iterations; no roll/flip jitter (a shifted
image would misplace the attention priors, which live on the patch grid); L_TV = |TV - v| with
PSAQ-ViT's v and its B·H·W scaling. α1 (``apa_weight``): None picks, on the first iteration, the power
of ten nearest L_SL / L_APA, clipped to the paper's range [1, 1e5], so both terms start at similar size;
the value used is recorded. All draws come from one generator seeded with the seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import ATTENTION, CLASSES, GENERATORS, CalibrationSet, GenerationContext, Generator, HarnessError
from harness.api import at_least, positive
from harness.api.quantizer import SUPPORTED, is_window_attention
from harness.api.synthesis import (PixelSynthesis, Probe, SynthesisOptions, aligned_blocks, attention_alignment_loss,
                                   attention_probes, field_order, gaussian_mixture_priors, gaussian_noise,
                                   patch_attention, synthesis_lr, tv_loss, tv_target)
from methods.spdfq.semantics import cells_per_side, crop_and_resize, msr_regions, soft_cross_entropy, soft_targets

APA_WEIGHT_RANGE = (1.0, 1e5)  # docs/methods.md, SPDFQ: α1 is per model, 1 to 1e5


@field_order(  # as declared before the shared bases: records' labels list options in this order
    "num_images", "apa", "msr", "sl", "batch_size", "iterations", "warmup", "lr", "betas", "eps",
    "apa_weight", "num_modes", "width_range", "msr_max_patches", "target_logit_range", "tv_weight",
    "tv_target_range")
@dataclass
class SPDFQOptions(SynthesisOptions):
    """docs/methods.md, SPDFQ. SynthesisOptions gives ``num_images`` and ``batch_size`` (B = 32), the
    0.05·L_TV term, PSAQ-ViT's v and its Adam (lr None: 0.20 ViT/DeiT, 0.25 Swin), and its warm-up
    before the cosine decay (PSAQ-ViT's schedule; ours for SPDFQ)."""

    apa: bool = True  # Attention Priors Alignment
    msr: bool = True  # Multi-Semantic Reinforcement
    sl: bool = True  # soft-label learning (off: one-hot cross-entropy)
    iterations: int = at_least(1, 1000)  # SPDFQ: 1000 Adam iterations
    eps: float = positive(1e-8)  # Adam
    apa_weight: float | None = at_least(0, None)  # α1; None: power of ten balancing L_APA with L_SL at the start
    num_modes: int = at_least(1, 5)  # SPDFQ APA: K = 5 Gaussians per prior
    width_range: tuple[float, float] = positive((0.05, 0.25))  # prior σ / grid side (unpublished; ours)
    msr_max_patches: int = at_least(1, 4)  # SPDFQ MSR: m in {1..4}, K_MSR = 4
    target_logit_range: tuple[float, float] = (5.0, 10.0)  # SPDFQ SL: target logits ~ U(5, 10)

    def __post_init__(self) -> None:
        for name in ("width_range", "target_logit_range"):  # YAML gives lists
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        super().__post_init__()
        if min(self.iterations, self.num_modes, self.msr_max_patches) < 1:
            raise ValueError("iterations, num_modes and msr_max_patches must be >= 1")
        if self.warmup > self.iterations:
            raise ValueError(f"warmup must be in [0, iterations], got {self.warmup}")
        if self.apa_weight is not None and self.apa_weight < 0:
            raise ValueError("apa_weight must be >= 0 (or None for the default)")
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
        options, prior = self.options, context.prior
        classes, cells = prior.num_classes, cells_per_side(options.msr_max_patches) ** 2
        noise = gaussian_noise(prior, size, generator).to(context.device)
        labels = torch.randint(classes, (size,), generator=generator)
        cell_labels = torch.randint(classes, (size, cells), generator=generator)  # MSR: one target per cell
        targets, cell_targets = (self._targets(y, classes, generator).to(context.device) for y in (labels, cell_labels))
        tv_goal = tv_target(tuple(noise.shape), generator, *options.tv_target_range)
        synthesis = PixelSynthesis(noise, prior, generator, lr=lr, betas=options.betas, eps=options.eps,
                                   round_length=options.iterations, warmup=options.warmup)  # no jitter
        with attention_probes(context.model) as probes:
            if not probes:
                raise HarnessError(f"spdfq found no attention it can probe; supported: {SUPPORTED}")
            objective = _Objective(options, context, probes, targets, cell_targets, tv_goal, alpha, generator)
            images, final = synthesis.run(objective, description, spec=".3g")
        return images, labels, {"tv_target": tv_goal, "apa_weight": objective.alpha, "final_loss": final}

    def _targets(self, labels: Tensor, classes: int, generator: torch.Generator) -> Tensor:
        """SL: soft targets; with ``sl`` off, one-hot ones (the soft CE is then plain CE)."""
        if self.options.sl:
            return soft_targets(labels, classes, generator, self.options.target_logit_range)
        return F.one_hot(labels, classes).float()


class _Objective:
    """L_G = L_CE + L_MSR + 0.05·L_TV + α1·L_APA on the unjittered batch; draws the attention priors on
    the first iteration, and α1 there too when the options leave it to the default."""

    def __init__(self, options: SPDFQOptions, context: GenerationContext, probes: list[tuple[nn.Module, Probe]],
                 targets: Tensor, cell_targets: Tensor, tv_goal: float, alpha: float | None,
                 generator: torch.Generator) -> None:
        self.options, self.model, self.device, self.probes = options, context.model, context.device, probes
        self.targets, self.cell_targets, self.tv_goal, self.alpha = targets, cell_targets, tv_goal, alpha
        self.generator, self.blocks = generator, aligned_blocks(len(probes))
        self.priors: list[Tensor] | None = None

    def __call__(self, images: Tensor, iteration: int) -> tuple[Tensor, dict[str, Tensor]]:
        options, model = self.options, self.model
        terms = {"ce": soft_cross_entropy(model(images), self.targets), "tv": tv_loss(images, self.tv_goal)}
        if options.apa:
            attentions = [self._attention(*self.probes[index]) for index, _ in self.blocks]
            if self.priors is None:  # SPDFQ: priors drawn once per image, at the shapes the model gives
                self.priors = [self._priors(self.probes[index][0], attention.shape).to(self.device)
                               for (index, _), attention in zip(self.blocks, attentions)]
            terms["apa"] = attention_alignment_loss(attentions, self.priors, [w for _, w in self.blocks])
        if options.msr:
            height, width = images.shape[-2:]
            regions = msr_regions(len(images), height, width, options.msr_max_patches, self.generator)
            crop_targets = torch.stack([self.cell_targets[r.image, r.cell] for r in regions])
            terms["msr"] = soft_cross_entropy(model(crop_and_resize(images, regions)), crop_targets)
        loss = terms["ce"] + terms.get("msr", 0) + options.tv_weight * terms["tv"]
        if options.apa:
            self.alpha = _balancing_weight(terms) if self.alpha is None else self.alpha
            loss = loss + self.alpha * terms["apa"]
        return loss, terms

    def _priors(self, attention: nn.Module, shape: torch.Size) -> Tensor:
        """SPDFQ APA: one prior per (image, head) of an aligned block; Swin: per window, over the window grid."""
        maps, heads, patches = shape
        is_swin = is_window_attention(attention)
        grid = tuple(attention.window_size if is_swin else self.model.patch_embed.grid_size)
        if grid[0] * grid[1] != patches:
            raise HarnessError(f"spdfq: attention over {patches} patches does not match the patch grid {grid}")
        drawn, _ = gaussian_mixture_priors(maps * heads, grid, self.generator, self.options.num_modes,
                                           self.options.width_range)
        return drawn.view(maps, heads, patches)

    def _attention(self, attention: nn.Module, probe: Probe) -> Tensor:
        """SPDFQ APA: class-token row for ViT/DeiT, query-averaged window attention for Swin."""
        is_swin = is_window_attention(attention)
        return patch_attention(probe.value, getattr(self.model, "num_prefix_tokens", 1), query_average=is_swin)


def _balancing_weight(terms: dict[str, Tensor]) -> float:
    """α1 default: the power of ten nearest L_SL / L_APA at the first iteration, in [1, 1e5]."""
    if terms["apa"].item() <= 0:
        return 1.0
    ratio = (terms["ce"] + terms.get("msr", 0)).item() / terms["apa"].item()
    return float(min(max(10 ** round(math.log10(ratio)), APA_WEIGHT_RANGE[0]), APA_WEIGHT_RANGE[1]))
