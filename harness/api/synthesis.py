"""Image priors and the pixel-synthesis loop generators share (docs/methods.md, Pixel synthesis):
probes, losses, augmentations, schedules. For generators.
"""
from __future__ import annotations

from harness.priors.attention_logits import attention_logit_probes
from harness.priors.attention_prior import (aligned_blocks, attention_alignment_loss, attention_probes,
                                            gaussian_mixture_priors, patch_attention)
from harness.priors.gallery import save_image_grid
from harness.priors.loop import Objective, PixelSynthesis, SynthesisOptions, field_order, gaussian_noise
from harness.priors.patch_similarity import PatchSimilarityOptions, Probe, attn_v_probes, patch_similarity_loss
from harness.priors.synthesis import (TV_SCALINGS, clamp_pixels, pixel_bounds, pixel_optimizer, random_roll_flip,
                                      synthesis_lr, total_variation, tv_loss, tv_target, warmup_cosine_lr)

__all__ = [
    "TV_SCALINGS", "Objective", "PatchSimilarityOptions", "PixelSynthesis", "Probe", "SynthesisOptions",
    "aligned_blocks", "attention_alignment_loss", "attention_logit_probes", "attention_probes", "attn_v_probes",
    "clamp_pixels", "field_order", "gaussian_mixture_priors", "gaussian_noise", "patch_attention",
    "patch_similarity_loss", "pixel_bounds", "pixel_optimizer", "random_roll_flip", "save_image_grid", "synthesis_lr",
    "total_variation", "tv_loss", "tv_target", "warmup_cosine_lr",
]
