"""PSAQ-ViT (``psaq``; Li et al., ECCV 2022; docs/methods.md, PSAQ-ViT).

Generator ``psaq`` (:mod:`methods.psaq.generator`): Gaussian noise optimized so that every block's
patch-similarity entropy is high, with random target labels and a total-variation prior. The
method pairs it with min-max ranges, as PSAQ-ViT's code does. ``python -m methods.psaq.export``
writes a cached calibration set as a PNG grid.
"""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.psaq.generator import PatchSimilarityGenerator

METHODS.add("psaq", MethodSpec(generator="psaq", calibrator="minmax",
                               description="PSAQ-ViT patch-similarity synthesis, min-max ranges"))

__all__ = ["PatchSimilarityGenerator"]
