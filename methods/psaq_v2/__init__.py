"""PSAQ-ViT V2 (``psaq_v2``; Li et al., TNNLS 2024; docs/methods.md, PSAQ-ViT V2).

Its samples and its student evolve together, so the method is split where the runner allows:
generator ``psaq_v2_init`` (:mod:`methods.psaq_v2.generator`) makes the bit-independent first
samples (cached across bit widths), calibrator ``minmax`` initializes the student on them, and tuner
``psaq_v2`` (:mod:`methods.psaq_v2.tuner`) runs the adaptive teacher-student loop. No labels.
"""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.psaq_v2.generator import InitOptions, PSAQV2InitGenerator
from methods.psaq_v2.tuner import PSAQV2Options, PSAQV2Tuner

METHODS.add("psaq_v2", MethodSpec(generator="psaq_v2_init", calibrator="minmax", tuner="psaq_v2",
                                  description="PSAQ-ViT V2 adaptive teacher-student samples, learned student"))

__all__ = ["InitOptions", "PSAQV2InitGenerator", "PSAQV2Options", "PSAQV2Tuner"]
