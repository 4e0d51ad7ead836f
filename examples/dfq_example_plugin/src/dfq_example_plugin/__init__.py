"""``smooth_noise``: a method plugin living outside the harness, registered through an entry point.

The harness imports this module when it discovers plugins (entry-point group ``dfq_harness.methods``
in pyproject.toml). Calibration images are Gaussian noise drawn at 1/``scale`` of the input
resolution, upsampled and clamped to the pixel range: smoother than the ``noise`` baseline.
The method pairs them with the core's percentile calibrator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from harness.api import GENERATORS, METHODS, CalibrationSet, GenerationContext, Generator, ImageCountOptions, MethodSpec
from harness.api.synthesis import clamp_pixels


@dataclass
class SmoothNoiseOptions(ImageCountOptions):
    """``num_images`` (32) comes from ImageCountOptions."""

    scale: int = 4  # noise drawn at (H / scale, W / scale), then upsampled bilinearly (ours)

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"scale must be >= 1, got {self.scale}")


@GENERATORS.register("smooth_noise")
class SmoothNoise(Generator):
    """Low-resolution N(0, 1) noise, upsampled and clamped to pixels in [0, 1]."""

    Options = SmoothNoiseOptions
    smoke_options: ClassVar[dict[str, Any]] = {"num_images": 4}

    def generate(self, context: GenerationContext) -> CalibrationSet:
        channels, height, width = context.prior.input_size
        scale = self.options.scale
        coarse = torch.randn(self.options.num_images, channels, max(1, height // scale), max(1, width // scale),
                             generator=torch.Generator().manual_seed(context.seed))
        images = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        return CalibrationSet(images=clamp_pixels(images, context.prior),
                              info={"source": f"N(0, 1) at 1/{scale} resolution, upsampled, clamped"})


METHODS.add("smooth_noise", MethodSpec(generator="smooth_noise", calibrator="percentile",
                                       description="smoothed Gaussian noise, percentile ranges (example plugin)"))
