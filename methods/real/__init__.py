"""Baseline ``real``: calibration images from the task's training split (docs/methods.md, Baselines).

The upper reference every data-free method is compared with; Liu et al. used 1000 images, the
default here is 32 (``num_images``), as for the synthetic generators.
"""
from __future__ import annotations

from harness.api import GENERATORS, METHODS, CalibrationSet, GenerationContext, Generator, ImageCountOptions, MethodSpec


@GENERATORS.register("real")
class RealImages(Generator):
    """A seeded random draw of ``num_images`` training images, normalized for the model."""

    Options = ImageCountOptions
    uses_real_data = True

    def generate(self, context: GenerationContext) -> CalibrationSet:
        images = context.task.calibration_images(context.model_name, self.options.num_images, context.seed)
        return CalibrationSet(images=images, info={"source": f"{context.task.name} training split"})


METHODS.add("real", MethodSpec(generator="real", calibrator="minmax",
                               description="real training images, min-max ranges (baseline)"))
