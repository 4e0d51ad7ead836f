"""The class source of detection/segmentation backbones: its classifier, its weights, its head (no mmdet needed)."""
from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from harness.data.mm.class_source import (ClassSource, build_classifier, classifier_architecture, classifier_head,
                                          fold_input_normalization, resolve)
from harness.errors import HarnessError
from harness.plugin.task import ImagePrior
from harness.store.io import file_sha256

IMAGENET = ImagePrior(input_size=(3, 32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the normalization of timm's original ViT-B (mmseg's ViT-B starts from it)
TINY_VIT = {"type": "VisionTransformer", "embed_dims": 32, "num_layers": 2, "num_heads": 2, "patch_size": 8}


def test_folding_the_classifier_s_normalization_into_its_patch_embedding_is_exact():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, kernel_size=4, stride=4)
    folded = nn.Conv2d(3, 8, kernel_size=4, stride=4)
    folded.load_state_dict(conv.state_dict())
    fold_input_normalization(folded, IMAGENET, *HALF)
    pixels = torch.rand(2, 3, 16, 16)
    task_images = (pixels - torch.tensor(IMAGENET.mean).view(1, 3, 1, 1)) / torch.tensor(IMAGENET.std).view(1, 3, 1, 1)
    classifier_images = (pixels - 0.5) / 0.5
    assert torch.allclose(folded(task_images), conv(classifier_images), atol=1e-5)
    unchanged = nn.Conv2d(3, 8, kernel_size=4, stride=4)
    before = unchanged.weight.clone()
    fold_input_normalization(unchanged, IMAGENET, IMAGENET.mean, IMAGENET.std)  # same normalization: untouched
    assert torch.equal(unchanged.weight, before)
    with pytest.raises(HarnessError, match="pads its input"):
        fold_input_normalization(nn.Conv2d(3, 8, kernel_size=3, padding=1), IMAGENET, *HALF)


def test_the_classifier_takes_the_backbone_s_architecture_and_its_named_weights(tmp_path):
    import timm

    assert classifier_architecture(TINY_VIT) == {"mlp_ratio": 4, "qkv_bias": True, "embed_dim": 32, "depth": 2,
                                                 "num_heads": 2, "patch_size": 8}
    swin = {"type": "SwinTransformer", "embed_dims": 16, "depths": [2, 2], "num_heads": [1, 2], "window_size": 4}
    assert classifier_architecture(swin) == {"mlp_ratio": 4, "qkv_bias": True, "embed_dim": 16, "depths": (2, 2),
                                             "num_heads": (1, 2), "window_size": 4, "patch_size": 4}
    with pytest.raises(HarnessError, match="no timm classifier architecture is known for a ResNet backbone"):
        classifier_architecture({"type": "ResNet"})
    torch.manual_seed(0)
    name = "vit_base_patch16_224.orig_in21k_ft_in1k"  # normalized with mean = std = 0.5
    reference = timm.create_model(name, img_size=32, **classifier_architecture(TINY_VIT)).eval()
    weights = tmp_path / "classifier.safetensors"
    save_file(reference.state_dict(), weights)
    classifier = build_classifier(ClassSource("classifier", name, weights, "x"), TINY_VIT, IMAGENET)
    pixels = torch.rand(2, 3, 32, 32)
    task_images = (pixels - torch.tensor(IMAGENET.mean).view(1, 3, 1, 1)) / torch.tensor(IMAGENET.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(classifier(task_images), reference((pixels - 0.5) / 0.5), atol=1e-4)
    assert not any(parameter.requires_grad for parameter in classifier.parameters()) and not classifier.training


def test_a_missing_class_source_says_what_to_supply(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(HarnessError) as error:
        resolve("classifier", "deit_small_patch16_224.fb_in1k", None, "VisionTransformer")
    assert str(error.value) == (
        "no weights for deit_small_patch16_224.fb_in1k: expected model.safetensors of timm/deit_small_patch16_224.fb_in1k "
        f"in the Hugging Face hub cache, at {tmp_path}/hub/models--timm--deit_small_patch16_224.fb_in1k/snapshots/"
        "<commit>/model.safetensors (HF_HUB_OFFLINE is set; fetch it where there is network, e.g. `hf download "
        "timm/deit_small_patch16_224.fb_in1k model.safetensors`), or pass --task-opt prior_classifier=FILE")
    with pytest.raises(HarnessError, match=re.escape(f"prior_classifier {tmp_path}/absent.pt does not exist")):
        resolve("classifier", "deit_small_patch16_224.fb_in1k", str(tmp_path / "absent.pt"), "VisionTransformer")
    with pytest.raises(HarnessError, match="class_source=backbone_head needs a Swin backbone"):
        resolve("backbone_head", "deit_small_patch16_224.fb_in1k", str(tmp_path / "absent.pt"), "VisionTransformer")
    weights = tmp_path / "w.safetensors"
    save_file({"head.weight": torch.ones(3, 2)}, weights)
    source = resolve("classifier", "deit_small_patch16_224.fb_in1k", str(weights), "VisionTransformer")
    assert source.record() == {"kind": "classifier", "classifier": "deit_small_patch16_224.fb_in1k",
                               "weights_sha256": file_sha256(weights)[:16]}


@pytest.mark.parametrize("prefix", ["head.fc", "head"])
def test_the_head_is_read_from_either_naming(tmp_path, prefix):
    weights = tmp_path / "w.safetensors"
    weight, bias = torch.randn(5, 4), torch.randn(5)
    save_file({f"{prefix}.weight": weight, f"{prefix}.bias": bias, "norm.weight": torch.ones(4)}, weights)
    head = classifier_head(ClassSource("backbone_head", "swin", weights, "x"))
    assert torch.equal(head.weight, weight) and torch.equal(head.bias, bias) and not head.weight.requires_grad
    save_file({"fc.weight": weight}, weights)
    with pytest.raises(HarnessError, match=r"has no head \(head.fc.weight or head.weight\)"):
        classifier_head(ClassSource("backbone_head", "swin", weights, "x"))
