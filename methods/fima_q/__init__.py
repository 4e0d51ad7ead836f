"""FIMA-Q (Wang et al., CVPR 2025), calibrator ``fimaq``: grid-searched uniform quantizers, block
reconstruction under a diagonal-plus-low-rank Fisher information loss (docs/methods.md, FIMA-Q).

Method ``fima_q`` is the paper's setting, real training images; any generator may feed the calibrator.
"""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.fima_q.calibrator import FIMAQCalibrator, FIMAQOptions

METHODS.add("fima_q", MethodSpec(generator="real", calibrator="fimaq",
                                 description="FIMA-Q: searched uniform quantizers, AdaRound+QDrop under a "
                                             "diagonal-plus-low-rank Fisher loss, real images"))

__all__ = ["FIMAQCalibrator", "FIMAQOptions"]
