"""PSAQ-ViT's generator (spec methods.md, PSAQ-ViT): images optimized for patch-similarity entropy.

Every hyper-parameter is an option with the spec's default. Two choices the spec leaves open:
``num_images`` larger than ``batch_size`` is made in independent batches (the reference makes one
batch of 32), and the TV target v, drawn for B = 32 RGB images at 224 px, is scaled by the square root
of the element count ratio for other sizes (spec step 5 asks to scale it and say how; see
:func:`harness.priors.synthesis.tv_target`; ``tv_scaling="linear"`` scales by B·H·W instead). On images smaller
than the roll range (16 px digits, ±15/±30 px) ``torch.roll`` wraps around, so the jitter becomes a
cyclic shift by nearly any amount; that is kept as the spec's behaviour, ``roll_ranges`` changes it.
On a detection/segmentation backbone, which has no classes, L_OH is dropped (README §4, PSAQ-ViT V2's
task-agnostic setting); ``one_hot_on_backbones`` keeps it by synthesizing through the task's class
source (docs/methods.md, Class sources).
Every random draw (noise, labels, v, offsets, flips) comes from one generator seeded with the seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.arch import SUPPORTED
from harness.errors import HarnessError
from harness.method import CalibrationSet, GenerationContext, Generator, ImageCountOptions
from harness.priors.patch_similarity import Probe, attn_v_probes, patch_similarity_loss
from harness.priors.synthesis import (TV_SCALINGS, clamp_pixels, pixel_bounds, pixel_optimizer, random_roll_flip,
                                      synthesis_lr, total_variation, tv_target, warmup_cosine_lr)
from harness.progress import progress_bar, show_losses
from harness.registry import GENERATORS
from harness.support import ATTENTION, CLASSES



@dataclass
class PSAQOptions(ImageCountOptions):
    """Spec methods.md, PSAQ-ViT; step numbers refer to it. ``num_images`` (32) comes from ImageCountOptions."""

    batch_size: int = 32  # step 1: B images optimized together
    iterations: int = 500  # step 3: per round
    warmup: int = 100  # step 3: linear warm-up iterations at the start of every round
    roll_ranges: tuple[int, ...] = (15, 30)  # step 4: ±px of the roll, one entry per round (two rounds)
    flip_probability: float = 0.5  # step 4
    lr: float | None = None  # step 3: None = by architecture, 0.20 ViT/DeiT, 0.25 Swin
    betas: tuple[float, float] = (0.5, 0.9)  # step 3: Adam
    eps: float = 1e-8  # step 3: Adam
    pse_weight: float = 1.0  # step 5: L = 1.0·L_PSE + 1.0·L_OH + 0.05·L_TV; 0 ablates the PSE prior
    oh_weight: float = 1.0  # step 5
    # README §4: a backbone without classes drops L_OH (PSAQ-ViT V2's task-agnostic setting); true keeps it,
    # synthesizing through the task's class source (docs/methods.md, Class sources)
    one_hot_on_backbones: bool = False
    tv_weight: float = 0.05  # step 5
    tv_target_range: tuple[float, float] = (2500.0, 3000.0)  # step 5: v ~ U(2500, 3000) for B = 32 at 224 px
    tv_scaling: Literal["sqrt", "linear"] = "sqrt"  # step 5: how v follows the batch size (tv_target explains)
    bandwidth: float = 0.01  # step 5: KDE bandwidth
    kde_points: int = 10  # step 5: KDE evaluation points
    entropy_offset: float = 1e-4  # step 5: -(p + 1e-4) log(p + 1e-4)

    def __post_init__(self) -> None:
        self.roll_ranges = tuple(int(r) for r in self.roll_ranges)  # YAML overrides arrive as lists
        self.betas = tuple(float(b) for b in self.betas)
        self.tv_target_range = tuple(float(v) for v in self.tv_target_range)
        if min(self.num_images, self.batch_size, self.iterations, self.kde_points - 1) < 1:
            raise ValueError("num_images, batch_size and iterations must be >= 1 and kde_points >= 2")
        if not 0 <= self.warmup <= self.iterations:
            raise ValueError(f"warmup must be in [0, iterations], got {self.warmup}")
        if not self.roll_ranges or min(self.roll_ranges) < 0:
            raise ValueError(f"roll_ranges needs one range >= 0 per round, got {self.roll_ranges}")
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if self.tv_scaling not in TV_SCALINGS:
            raise ValueError(f"tv_scaling must be one of {', '.join(TV_SCALINGS)}, got {self.tv_scaling!r}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive or None (by architecture), got {self.lr}")


@GENERATORS.register("psaq")
class PatchSimilarityGenerator(Generator):
    """PSAQ-ViT synthesis: noise optimized for patch-similarity entropy, random labels and smoothness."""

    Options = PSAQOptions
    needs = frozenset({ATTENTION})  # the attn·v products of step 5
    smoke_options = {"num_images": 4, "batch_size": 4, "iterations": 2, "warmup": 1}  # conformance kit only

    def required(self) -> frozenset[str]:
        """Classes too when ``one_hot_on_backbones`` asks for L_OH where the task's model has none of its own."""
        return self.needs | ({CLASSES} if self.options.one_hot_on_backbones else set())

    def generate(self, context: GenerationContext) -> CalibrationSet:
        options = self.options
        generator = torch.Generator().manual_seed(context.seed)  # every random draw comes from it
        lr = options.lr or synthesis_lr(context.model)
        sizes = [min(options.batch_size, options.num_images - start)
                 for start in range(0, options.num_images, options.batch_size)]
        images, labels, reports = [], [], []
        for index, size in enumerate(sizes):
            batch, batch_labels, report = self._synthesize(context, size, lr, generator, f"psaq {index + 1}/{len(sizes)}")
            images.append(batch)
            labels.append(batch_labels)
            reports.append(report)
        return CalibrationSet(images=torch.cat(images), labels=torch.cat(labels) if context.prior.num_classes else None,
                              info={"source": "PSAQ-ViT synthesis", "lr": lr, "batches": reports,
                                    "one_hot_term": bool(context.prior.num_classes)})

    def _synthesize(self, context: GenerationContext, size: int, lr: float, generator: torch.Generator,
                    description: str) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """One batch: spec steps 1-6, the Adam state carried across rounds, the schedule restarted."""
        options, prior, model = self.options, context.prior, context.model
        channels, height, width = prior.input_size
        images = torch.randn(size, channels, height, width, generator=generator).to(context.device)  # step 1
        # Step 2; a detection/segmentation backbone has no classes (README §4), so no labels and no L_OH.
        labels = torch.randint(prior.num_classes or 1, (size,), generator=generator)
        target = tv_target((size, channels, height, width), generator, *options.tv_target_range,
                           scaling=options.tv_scaling)  # step 5
        labels_on_device = labels.to(context.device)
        bounds = pixel_bounds(prior, images)  # step 6
        images.requires_grad_(True)
        optimizer = pixel_optimizer(images, lr, options.betas, options.eps)  # step 3
        bar = progress_bar(range(options.iterations * len(options.roll_ranges)), desc=description, leave=False)
        with attn_v_probes(model) as probes:
            if not probes:
                raise HarnessError(f"psaq found no attention it can probe; supported: {SUPPORTED}")
            for step in bar:
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine_lr(step, lr, options.iterations, options.warmup)
                max_shift = options.roll_ranges[step // options.iterations]
                augmented = random_roll_flip(images, max_shift, options.flip_probability, generator)  # step 4
                terms = self._loss_terms(model(augmented), augmented, probes, labels_on_device, target,
                                         one_hot=bool(prior.num_classes))
                loss = (options.pse_weight * terms["pse"] + options.oh_weight * terms.get("oh", 0)
                        + options.tv_weight * terms["tv"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    images.copy_(clamp_pixels(images, bounds))  # step 6
                show_losses(bar, step, terms)
        report = {"tv_target": target, "final_loss": {name: value.item() for name, value in terms.items()}}
        return images.detach(), labels, report

    def _loss_terms(self, output: Tensor, augmented: Tensor, probes: list[Probe], labels: Tensor,
                    target: float, one_hot: bool) -> dict[str, Tensor]:
        """Spec step 5: L_PSE, L_OH (classifiers only) and L_TV on the augmented batch."""
        options = self.options
        terms = {
            "pse": patch_similarity_loss([probe.value for probe in probes], augmented.shape[0],
                                         options.bandwidth, options.kde_points, options.entropy_offset),
            "tv": (total_variation(augmented) - target).abs(),
        }
        if one_hot:
            terms["oh"] = F.cross_entropy(output, labels)
        return terms
