"""AdaLog (Wu et al., ECCV 2024), calibrator ``adalog``: adaptive-logarithm quantizers for post-softmax and
post-GELU activations, uniform quantizers found by the Fast Progressive Combining Search (docs/methods.md, AdaLog).

Method ``adalog`` is the paper's setting, real training images; any generator may feed the calibrator.
"""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.adalog.calibrator import AdaLogCalibrator, AdaLogOptions

METHODS.add("adalog", MethodSpec(generator="real", calibrator="adalog",
                                 description="AdaLog: adaptive-log post-softmax and post-GELU quantizers, "
                                             "progressively searched uniform quantizers, real images"))

__all__ = ["AdaLogCalibrator", "AdaLogOptions"]
