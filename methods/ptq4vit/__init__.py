"""PTQ4ViT (Yuan et al., ECCV 2022) as the calibrator ``ptq4vit`` and the method ``ptq4vit`` (docs/methods.md, PTQ4ViT).

``ptq4vit`` pairs the calibrator with ``real`` training images, the paper's setting; any generator
can feed it (``--data psaq --calib ptq4vit``).
"""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.ptq4vit.calibrator import PTQ4ViTCalibrator, PTQ4ViTOptions

METHODS.add("ptq4vit", MethodSpec(generator="real", calibrator="ptq4vit",
                                  description="PTQ4ViT: twin-uniform post-softmax / post-GELU quantizers, "
                                              "Hessian-guided scale search, real images"))

__all__ = ["PTQ4ViTCalibrator", "PTQ4ViTOptions"]
