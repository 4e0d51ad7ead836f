"""PSAQ-ViT V2's label-free sample loss L_x = L_PSE - λ_adv·D + λ_tv·L_TV (docs/methods.md, PSAQ-ViT V2); the
teacher-student discrepancy D is the core's (harness.quant.distillation), shared with the fine-tuning tuners.

No class labels appear anywhere ("no auxiliary category guidance"): the prior is PSAQ-ViT's
patch-similarity entropy of the FP teacher plus its total-variation term, the rest is D.
"""
from __future__ import annotations

from torch import Tensor

from harness.api.synthesis import PatchSimilarityOptions, Probe, tv_loss


def prior_terms(images: Tensor, probes: list[Probe], tv_target: float,
                pse: PatchSimilarityOptions) -> dict[str, Tensor]:
    """L_PSE of the teacher's attn·v outputs (probed during its last forward) and L_TV = |TV(x) - v|."""
    return {"pse": pse.pse_loss(probes, images.shape[0]), "tv": tv_loss(images, tv_target)}
