"""APHQ-ViT (Wu et al., CVPR 2025), calibrator ``aphq``: MLP reconstruction with ReLU, grid-searched uniform
quantizers, block reconstruction under the average perturbation Hessian (docs/methods.md, APHQ-ViT).

Method ``aphq_vit`` is the paper's setting, real training images; any generator may feed the calibrator.
"""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.aphq_vit.calibrator import APHQCalibrator, APHQOptions

METHODS.add("aphq_vit", MethodSpec(generator="real", calibrator="aphq",
                                   description="APHQ-ViT: MLP reconstruction (ReLU), searched uniform quantizers, "
                                               "AdaRound+QDrop under the perturbation Hessian, real images"))

__all__ = ["APHQCalibrator", "APHQOptions"]
