import pytest
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

torch.set_num_threads(2)  # the CI machine has 2 cores; more threads oversubscribe


@pytest.fixture
def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=32,
                             depth=2, num_heads=2, qkv_bias=True).eval()


@pytest.fixture
def tiny_swin() -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=16,
                           depths=(2, 2), num_heads=(2, 2), window_size=4).eval()
