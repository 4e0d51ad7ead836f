"""RepQ-ViT (Li et al., ICCV 2023) as the calibrator ``repq`` and the method ``repq_vit`` (docs/methods.md, RepQ-ViT).

``repq_vit`` pairs the calibrator with ``real`` training images, the paper's setting; any generator
can feed it (``--data psaq --calib repq``).
"""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.repq_vit.calibrator import RepQCalibrator, RepQOptions

METHODS.add("repq_vit", MethodSpec(generator="real", calibrator="repq",
                                   description="RepQ-ViT: reparameterized per-channel post-LayerNorm and "
                                               "log-sqrt2 post-softmax quantizers, real images"))

__all__ = ["RepQCalibrator", "RepQOptions"]
