"""Baseline ``noise``: x ~ N(0, 1) in the normalized input space (docs/methods.md, Baselines).

The floor every data-free method must beat.
"""
from __future__ import annotations

import torch

from harness.api import GENERATORS, METHODS, CalibrationSet, GenerationContext, Generator, ImageCountOptions, MethodSpec


@GENERATORS.register("noise")
class GaussianNoise(Generator):
    """``num_images`` standard-normal images of the task's input shape, seeded."""

    Options = ImageCountOptions
    in_pixel_range = False  # N(0, 1) in normalized space leaves the pixel range by design

    def generate(self, context: GenerationContext) -> CalibrationSet:
        generator = torch.Generator().manual_seed(context.seed)
        images = torch.randn(self.options.num_images, *context.prior.input_size, generator=generator)
        return CalibrationSet(images=images, info={"source": "N(0, 1)"})


METHODS.add("noise", MethodSpec(generator="noise", calibrator="minmax",
                                description="Gaussian noise images, min-max ranges (floor baseline)"))
