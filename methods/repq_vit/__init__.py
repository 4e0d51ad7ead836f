"""RepQ-ViT (Li et al., ICCV 2023), calibrator ``repq``: per-channel post-LayerNorm ranges folded into the
norm's affine and the next layer, a log-√2 post-softmax quantizer (docs/methods.md, RepQ-ViT).

Method ``repq_vit`` is the paper's setting, real training images; any generator may feed the calibrator.
"""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.repq_vit.calibrator import RepQCalibrator, RepQOptions

METHODS.add("repq_vit", MethodSpec(generator="real", calibrator="repq",
                                   description="RepQ-ViT: reparameterized per-channel post-LayerNorm and "
                                               "log-sqrt2 post-softmax quantizers, real images"))

__all__ = ["RepQCalibrator", "RepQOptions"]
