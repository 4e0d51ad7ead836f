"""PTQ4ViT (Yuan et al., ECCV 2022): twin-uniform quantizers after softmax and GELU, scales searched
against a Hessian-weighted output distance (docs/methods.md, PTQ4ViT). The method ``ptq4vit`` calibrates
on 32 real training images as the paper does; ``--data <generator> --calib ptq4vit`` feeds it synthetic ones.
"""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.ptq4vit.calibrator import PTQ4ViTCalibrator, PTQ4ViTOptions

METHODS.add("ptq4vit", MethodSpec(generator="real", calibrator="ptq4vit",
                                  description="PTQ4ViT: twin-uniform post-softmax / post-GELU quantizers, "
                                              "Hessian-guided scale search, real images"))

__all__ = ["PTQ4ViTCalibrator", "PTQ4ViTOptions"]
