"""``psaq_v2_init``: PSAQ-ViT V2's first samples, the ones the student is min-max initialized on.

Gaussian noise, then ``prior_iterations`` steps of the label-free PSAQ prior alone
(L_PSE + λ_tv·L_TV on the FP teacher, PSAQ-ViT's jitter, Adam and warm-up/cosine schedule). The
paper leaves the initial samples open: pure noise would give the "naive" min-max ranges of the
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

from harness.api import ATTENTION, GENERATORS, CalibrationSet, GenerationContext, Generator, HarnessError
from harness.api import at_least, positive, probability
from harness.api.quantizer import SUPPORTED
from harness.api.synthesis import (PatchSimilarityOptions, PixelSynthesis, SynthesisOptions, attn_v_probes,
                                   clamp_pixels, field_order, gaussian_noise, tv_target)
from methods.psaq_v2.losses import prior_terms


@field_order(  # as declared before the shared bases: records' labels list options in this order
    "num_images", "batch_size", "prior_iterations", "warmup", "lr", "betas", "max_shift", "flip_probability",
    "tv_weight", "tv_target_range", "bandwidth", "kde_points", "entropy_offset")
@dataclass
class InitOptions(SynthesisOptions, PatchSimilarityOptions):
    """``num_images`` = B = 32 (docs/methods.md, PSAQ-ViT V2). The rest *(unpublished)*,
    PSAQ-ViT's values (SynthesisOptions, PatchSimilarityOptions)."""

    prior_iterations: int = at_least(0, 200)  # *(unpublished)* label-free warm start; 1/5 of PSAQ-ViT's 1000
    warmup: int = at_least(0, 20)  # PSAQ-ViT step 3's warm-up share (100 of 500); capped at prior_iterations
    lr: float = positive(0.2)  # PSAQ-ViT V2: image lr 0.2, Adam as PSAQ-ViT
    max_shift: int = at_least(0, 15)  # PSAQ-ViT step 4, round 1
    flip_probability: float = probability(0.5)  # PSAQ-ViT step 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prior_iterations < 0:
            raise ValueError(f"prior_iterations must be >= 0, got {self.prior_iterations}")
        if self.lr is None or self.max_shift < 0 or not 0 <= self.flip_probability <= 1:
            raise ValueError("lr must be > 0, max_shift >= 0, flip_probability in [0, 1]")


@GENERATORS.register("psaq_v2_init")
class PSAQV2InitGenerator(Generator):
    """Noise warmed up by the label-free patch-similarity prior; no labels are drawn."""

    Options = InitOptions
    needs = frozenset({ATTENTION})  # the patch-similarity prior's attn·v products
    smoke_options: ClassVar[dict] = {"num_images": 4, "prior_iterations": 2, "warmup": 1}

    def generate(self, context: GenerationContext) -> CalibrationSet:
        generator = torch.Generator().manual_seed(context.seed)  # every random draw comes from it
        batches = [self._warm_start(context, size, generator) for size in self.options.batch_sizes()]
        return CalibrationSet(images=torch.cat(batches), info={
            "source": "N(0, 1) + label-free PSAQ prior" if self.options.prior_iterations else "N(0, 1)"})

    def _warm_start(self, context: GenerationContext, size: int, generator: torch.Generator) -> Tensor:
        options, prior = self.options, context.prior
        noise = gaussian_noise(prior, size, generator)
        images = clamp_pixels(noise, prior).to(context.device)
        target = tv_target(tuple(noise.shape), generator, *options.tv_target_range)
        synthesis = PixelSynthesis(images, prior, generator, lr=options.lr, betas=options.betas,
                                   round_length=options.prior_iterations,
                                   warmup=min(options.warmup, options.prior_iterations),
                                   max_shifts=(options.max_shift,), flip_probability=options.flip_probability)
        with attn_v_probes(context.model) as probes:
            if not probes:
                raise HarnessError(f"psaq_v2_init found no attention it can probe; supported: {SUPPORTED}")

            def objective(augmented: Tensor, iteration: int) -> tuple[Tensor, dict[str, Tensor]]:
                context.model(augmented)  # the probes catch the attn·v products
                terms = prior_terms(augmented, probes, target, options)
                return terms["pse"] + options.tv_weight * terms["tv"], terms

            return synthesis.run(objective, "psaq_v2 init")[0]
