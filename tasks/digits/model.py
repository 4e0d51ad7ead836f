"""The digits miniature ViT's architecture (its weights ship in ``weights/``)."""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer


def build_model() -> VisionTransformer:
    """img 16, patch 4 (16 patches), dim 64, depth 4, 4 heads, mlp 4, qkv bias, drop-path 0.1."""
    return VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4,
        num_heads=4, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.1,
    )
