"""The one pixel-synthesis loop: Adam over the pixels, warm-up + cosine lr, roll/flip jitter, clamp.

docs/methods.md, Pixel synthesis. PSAQ-ViT, PSAQ-ViT V2 (its first samples and its sample step) and
SPDFQ differ only in their loss and their own options: each passes an :data:`Objective`, the loop
does the rest, so the steps' order, and with it every random draw, is the same for all of them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from torch import Tensor

from harness.plugin.method import ImageCountOptions
from harness.plugin.options import Range, at_least, positive, ranged
from harness.plugin.task import ImagePrior
from harness.priors.synthesis import clamp_pixels, pixel_bounds, pixel_optimizer, random_roll_flip, warmup_cosine_lr
from harness.progress import progress_bar, show_losses

# (images the loss sees, iteration) -> (the loss to minimize, its named terms for the progress bar).
# An objective that accumulates the images' gradient itself (over batches, jittering each on its own)
# runs without the loop's jitter, so it is given the optimized images themselves: it sets their
# ``grad`` and returns a loss that needs no gradient, and the loop only steps.
Objective = Callable[[Tensor, int], tuple[Tensor, dict[str, Tensor]]]
OptionsClass = TypeVar("OptionsClass", bound=type)


def field_order(*names: str) -> Callable[[OptionsClass], OptionsClass]:
    """Give an options dataclass's fields (:func:`dataclasses.fields`, ``asdict``) the order ``names`` list.

    A record's label lists the options a cell changed in field order (harness.run.worker), and labels
    group records into leaderboard rows. Inherited fields come first, so options that moved to a shared
    base would label new records unlike the records already computed for the same configuration;
    this keeps the order they were declared in before.
    """
    def reorder(cls: OptionsClass) -> OptionsClass:
        declared = cls.__dataclass_fields__
        if sorted(names) != sorted(field.name for field in dataclasses.fields(cls)):
            raise TypeError(f"field_order of {cls.__name__} must list each of its fields once")
        cls.__dataclass_fields__ = {name: declared[name] for name in names} | {
            name: field for name, field in declared.items() if name not in names}  # ClassVar and InitVar entries
        return cls
    return reorder


@dataclass
class SynthesisOptions(ImageCountOptions):
    """The hyper-parameters every pixel-synthesis generator shares, with PSAQ-ViT's values
    (docs/methods.md, PSAQ-ViT, steps 1, 3 and 5); a method redeclares one to change its default."""

    batch_size: int = at_least(1, 32)  # step 1: B images optimized together (one TV target per batch)
    warmup: int = at_least(0, 100)  # step 3: linear warm-up iterations at the start of every round
    lr: float | None = positive(None)  # step 3: Adam; None = by architecture, 0.20 ViT/DeiT, 0.25 Swin
    betas: tuple[float, float] = ranged(Range(low=0, high=1, high_open=True), (0.5, 0.9))  # step 3: Adam
    tv_weight: float = at_least(0, 0.05)  # step 5: 0.05·L_TV
    tv_target_range: tuple[float, float] = positive((2500.0, 3000.0))  # step 5: v ~ U(2500, 3000) for B = 32 at 224 px

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # records and YAML give lists
        self.tv_target_range = tuple(float(v) for v in self.tv_target_range)
        if min(self.num_images, self.batch_size) < 1:
            raise ValueError("num_images and batch_size must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive or None (by architecture), got {self.lr}")
        following = getattr(super(), "__post_init__", None)  # a mixed-in options class checks its own
        if following is not None:
            following()

    def batch_sizes(self) -> list[int]:
        """``num_images`` made in independent batches of at most ``batch_size``."""
        return [min(self.batch_size, self.num_images - start) for start in range(0, self.num_images, self.batch_size)]


def gaussian_noise(prior: ImagePrior, size: int, generator: torch.Generator) -> Tensor:
    """Step 1: ``size`` images of N(0, 1) pixels at the prior's input size, on the host."""
    return torch.randn(size, *prior.input_size, generator=generator)


class PixelSynthesis:
    """Adam over ``images`` (a leaf from here on) for ``rounds`` rounds of ``round_length`` steps.

    The lr follows step 3's warm-up + cosine, restarted every round; one Adam state spans the rounds.
    ``max_shifts`` gives step 4's roll range per round, ``None`` no jitter (and no draws for it).
    After every step the pixels are clamped to the prior's range (step 6).
    """

    def __init__(self, images: Tensor, prior: ImagePrior, generator: torch.Generator, *, lr: float,
                 betas: tuple[float, float], round_length: int, warmup: int, eps: float = 1e-8,
                 max_shifts: tuple[int, ...] | None = None, flip_probability: float = 0.5) -> None:
        self.images, self.generator = images.requires_grad_(True), generator
        self.lr, self.round_length, self.warmup = lr, round_length, warmup
        self.max_shifts, self.flip_probability = max_shifts, flip_probability
        self.optimizer = pixel_optimizer(images, lr, betas, eps)
        self.bounds = pixel_bounds(prior, images)  # once: a copy to the device waits for it

    @property
    def iterations(self) -> int:
        """Steps over all rounds."""
        return self.round_length * len(self.max_shifts or (None,))

    def step(self, iteration: int, objective: Objective) -> dict[str, Tensor]:
        """One Adam step at ``iteration`` (counted over all rounds); returns the objective's terms."""
        for group in self.optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(iteration, self.lr, self.round_length, self.warmup)
        seen = self.images
        if self.max_shifts is not None:
            seen = random_roll_flip(seen, self.max_shifts[iteration // self.round_length], self.flip_probability,
                                    self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss, terms = objective(seen, iteration)
        if loss.requires_grad:
            loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.images.copy_(clamp_pixels(self.images, self.bounds))
        return terms

    def run(self, objective: Objective, description: str, spec: str = ".3f") -> tuple[Tensor, dict[str, float]]:
        """Every step, with a progress bar showing the terms; the images and the last terms' values."""
        bar = progress_bar(range(self.iterations), desc=description, leave=False)
        terms: dict[str, Tensor] = {}
        for iteration in bar:
            terms = self.step(iteration, objective)
            show_losses(bar, iteration, terms, spec=spec)
        return self.images.detach(), {name: value.item() for name, value in terms.items()}
