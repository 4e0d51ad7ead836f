"""``psaq_v2_init``: PSAQ-ViT V2's first samples, the ones the student is min-max initialized on.

Gaussian noise, then ``prior_iterations`` steps of the label-free PSAQ prior alone
(L_PSE + λ_tv·L_TV on the FP teacher, PSAQ-ViT's jitter, Adam and warm-up/cosine schedule). The
spec leaves the initial samples open: pure noise would give the "naive" min-max ranges of the
``noise`` baseline, which the student's small learning rate can barely move, so the warm start
makes the initial ranges come from images that already satisfy the prior. ``prior_iterations=0``
gives pure noise (clamped to the pixel range). The samples do not depend on the bit width, so the
runner caches them across bits; everything bit-dependent happens in the ``psaq_v2`` calibrator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from harness.arch import SUPPORTED
from harness.errors import HarnessError
from harness.method import CalibrationSet, GenerationContext, Generator, ImageCountOptions
from harness.priors.patch_similarity import attn_v_probes
from harness.priors.synthesis import (clamp_pixels, pixel_bounds, pixel_optimizer, random_roll_flip, tv_target,
                                      warmup_cosine_lr)
from harness.progress import progress_bar, show_losses
from harness.registry import GENERATORS
from harness.support import ATTENTION
from methods.psaq_v2.losses import prior_terms


@dataclass
class InitOptions(ImageCountOptions):
    """``num_images`` = B = 32 (spec PSAQ-ViT V2 defaults). The rest *(unpublished)*, PSAQ-ViT's values."""

    batch_size: int = 32  # images optimized together (one KDE range and TV target per batch)
    prior_iterations: int = 200  # *(unpublished)* label-free warm start; 1/5 of PSAQ-ViT's 1000
    warmup: int = 20  # PSAQ-ViT step 3's warm-up share (100 of 500); capped at prior_iterations
    lr: float = 0.2  # spec V2: image lr 0.2, Adam as PSAQ-ViT
    betas: tuple[float, float] = (0.5, 0.9)  # PSAQ-ViT step 3
    max_shift: int = 15  # PSAQ-ViT step 4, round 1
    flip_probability: float = 0.5  # PSAQ-ViT step 4
    tv_weight: float = 0.05  # PSAQ-ViT step 5
    tv_target_range: tuple[float, float] = (2500.0, 3000.0)  # PSAQ-ViT step 5, scaled as tv_target does
    bandwidth: float = 0.01  # PSAQ-ViT step 5
    kde_points: int = 10  # PSAQ-ViT step 5
    entropy_offset: float = 1e-4  # PSAQ-ViT step 5

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # records and YAML give lists
        self.tv_target_range = tuple(float(v) for v in self.tv_target_range)
        if min(self.num_images, self.batch_size, self.kde_points - 1) < 1:
            raise ValueError("num_images and batch_size must be >= 1 and kde_points >= 2")
        if min(self.prior_iterations, self.warmup) < 0:
            raise ValueError(f"prior_iterations and warmup must be >= 0, got {self.prior_iterations}, {self.warmup}")
        if self.lr <= 0 or self.max_shift < 0 or not 0 <= self.flip_probability <= 1:
            raise ValueError("lr must be > 0, max_shift >= 0, flip_probability in [0, 1]")


@GENERATORS.register("psaq_v2_init")
class PSAQV2InitGenerator(Generator):
    """Noise warmed up by the label-free patch-similarity prior; no labels are drawn."""

    Options = InitOptions
    needs = frozenset({ATTENTION})  # the patch-similarity prior's attn·v products
    smoke_options: ClassVar[dict] = {"num_images": 4, "prior_iterations": 2, "warmup": 1}

    def generate(self, context: GenerationContext) -> CalibrationSet:
        options = self.options
        generator = torch.Generator().manual_seed(context.seed)  # every random draw comes from it
        batches = [self._warm_start(context, min(options.batch_size, options.num_images - start), generator)
                   for start in range(0, options.num_images, options.batch_size)]
        low, high = context.prior.clamp_bounds()
        return CalibrationSet(images=torch.cat(batches), info={
            "source": "N(0, 1) + label-free PSAQ prior" if options.prior_iterations else "N(0, 1)",
            "pixel_bounds": {"low": low.flatten().tolist(), "high": high.flatten().tolist()},  # for the calibrator
        })

    def _warm_start(self, context: GenerationContext, size: int, generator: torch.Generator) -> Tensor:
        options, prior = self.options, context.prior
        channels, height, width = prior.input_size
        noise = torch.randn(size, channels, height, width, generator=generator)
        images = clamp_pixels(noise, prior).to(context.device).requires_grad_(True)
        target = tv_target((size, channels, height, width), generator, *options.tv_target_range)
        optimizer = pixel_optimizer(images, options.lr, options.betas)
        bounds = pixel_bounds(prior, images)
        with attn_v_probes(context.model) as probes:
            if not probes:
                raise HarnessError(f"psaq_v2_init found no attention it can probe; supported: {SUPPORTED}")
            bar = progress_bar(range(options.prior_iterations), desc="psaq_v2 init", leave=False)
            for step in bar:
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine_lr(step, options.lr, options.prior_iterations,
                                                     min(options.warmup, options.prior_iterations))
                augmented = random_roll_flip(images, options.max_shift, options.flip_probability, generator)
                context.model(augmented)
                terms = prior_terms(augmented, probes, target, options.bandwidth, options.kde_points,
                                    options.entropy_offset)
                optimizer.zero_grad(set_to_none=True)
                (terms["pse"] + options.tv_weight * terms["tv"]).backward()
                optimizer.step()
                with torch.no_grad():
                    images.copy_(clamp_pixels(images, bounds))
                show_losses(bar, step, terms)
        return images.detach()
