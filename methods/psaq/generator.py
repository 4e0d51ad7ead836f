"""PSAQ-ViT's generator (docs/methods.md, PSAQ-ViT): images optimized for patch-similarity entropy.

Every hyper-parameter is an option with the paper's default. Two choices it leaves open:
``num_images`` larger than ``batch_size`` is made in independent batches (the reference makes one
batch of 32), and the TV target v, drawn for B = 32 RGB images at 224 px, is scaled by the square root
of the element count ratio for other sizes (step 5 asks to scale it and say how; see
:func:`harness.priors.synthesis.tv_target`; ``tv_scaling="linear"`` scales by B·H·W instead). On images smaller
than the roll range (16 px digits, ±15/±30 px) ``torch.roll`` wraps around, so the jitter becomes a
cyclic shift by nearly any amount; that is kept as the paper's behaviour, ``roll_ranges`` changes it.
On a detection/segmentation backbone, which has no classes, L_OH is dropped (docs/methods.md,
Task-agnostic backbones); ``one_hot_on_backbones`` keeps it by synthesizing through the task's class
source (docs/methods.md, Class sources).
Every random draw (noise, labels, v, offsets, flips) comes from one generator seeded with the seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.api import ATTENTION, CLASSES, GENERATORS, CalibrationSet, GenerationContext, Generator, HarnessError
from harness.api import at_least, positive, probability
from harness.api.quantizer import SUPPORTED
from harness.api.synthesis import (TV_SCALINGS, Objective, PatchSimilarityOptions, PixelSynthesis, Probe,
                                   SynthesisOptions, attn_v_probes, field_order, gaussian_noise, synthesis_lr, tv_loss,
                                   tv_target)


@field_order(  # as declared before the shared bases: records' labels list options in this order
    "num_images", "batch_size", "iterations", "warmup", "roll_ranges", "flip_probability", "lr", "betas",
    "eps", "pse_weight", "oh_weight", "one_hot_on_backbones", "tv_weight", "tv_target_range", "tv_scaling",
    "bandwidth", "kde_points", "entropy_offset")
@dataclass
class PSAQOptions(SynthesisOptions, PatchSimilarityOptions):
    """docs/methods.md, PSAQ-ViT; step numbers refer to it. ``num_images`` (32), ``batch_size``, ``warmup``,
    ``lr``, ``betas``, ``tv_weight`` and ``tv_target_range`` come from SynthesisOptions, the KDE's from
    PatchSimilarityOptions."""

    iterations: int = at_least(1, 500)  # step 3: per round
    roll_ranges: tuple[int, ...] = at_least(0, (15, 30))  # step 4: ±px of the roll, one entry per round (two rounds)
    flip_probability: float = probability(0.5)  # step 4
    eps: float = positive(1e-8)  # step 3: Adam
    pse_weight: float = at_least(0, 1.0)  # step 5: L = 1.0·L_PSE + 1.0·L_OH + 0.05·L_TV; 0 ablates the PSE prior
    oh_weight: float = at_least(0, 1.0)  # step 5
    # docs/methods.md, Task-agnostic backbones: a backbone without classes drops L_OH; true keeps it, synthesizing through the task's class source
    # (docs/methods.md, Class sources)
    one_hot_on_backbones: bool = False
    tv_scaling: Literal["sqrt", "linear"] = "sqrt"  # step 5: how v follows the batch size (tv_target explains)

    def __post_init__(self) -> None:
        self.roll_ranges = tuple(int(r) for r in self.roll_ranges)  # YAML overrides arrive as lists
        super().__post_init__()
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.warmup > self.iterations:
            raise ValueError(f"warmup must be in [0, iterations], got {self.warmup}")
        if not self.roll_ranges or min(self.roll_ranges) < 0:
            raise ValueError(f"roll_ranges needs one range >= 0 per round, got {self.roll_ranges}")
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if self.tv_scaling not in TV_SCALINGS:
            raise ValueError(f"tv_scaling must be one of {', '.join(TV_SCALINGS)}, got {self.tv_scaling!r}")


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
        sizes = options.batch_sizes()
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
        """One batch: steps 1-6, the Adam state carried across rounds, the schedule restarted."""
        options, prior = self.options, context.prior
        noise = gaussian_noise(prior, size, generator).to(context.device)  # step 1
        # Step 2; a detection/segmentation backbone has no classes, so no labels and no L_OH.
        labels = torch.randint(prior.num_classes or 1, (size,), generator=generator)
        target = tv_target(tuple(noise.shape), generator, *options.tv_target_range, scaling=options.tv_scaling)
        synthesis = PixelSynthesis(noise, prior, generator, lr=lr, betas=options.betas, eps=options.eps,
                                   round_length=options.iterations, warmup=options.warmup,
                                   max_shifts=options.roll_ranges, flip_probability=options.flip_probability)
        with attn_v_probes(context.model) as probes:
            if not probes:
                raise HarnessError(f"psaq found no attention it can probe; supported: {SUPPORTED}")
            objective = self._objective(context, probes, labels.to(context.device), target)
            images, final = synthesis.run(objective, description)
        return images, labels, {"tv_target": target, "final_loss": final}

    def _objective(self, context: GenerationContext, probes: list[Probe], labels: Tensor, target: float) -> Objective:
        """Step 5 on the jittered batch: L = w_PSE·L_PSE + w_OH·L_OH (classifiers only) + w_TV·L_TV."""
        options, one_hot = self.options, bool(context.prior.num_classes)

        def objective(augmented: Tensor, iteration: int) -> tuple[Tensor, dict[str, Tensor]]:
            output = context.model(augmented)
            terms = {"pse": options.pse_loss(probes, augmented.shape[0]), "tv": tv_loss(augmented, target)}
            if one_hot:
                terms["oh"] = F.cross_entropy(output, labels)
            loss = (options.pse_weight * terms["pse"] + options.oh_weight * terms.get("oh", 0)
                    + options.tv_weight * terms["tv"])
            return loss, terms

        return objective
