"""Class logits for detection/segmentation backbones, which have none (docs/methods.md, Class sources).

The source is the ImageNet classifier the backbone was pre-trained as: the timm model of the same
architecture (read from the backbone's config, so a tiny test backbone gets a tiny classifier), its
weights from ``--task-opt prior_classifier=FILE`` or timm's file in the Hugging Face hub cache.
Two ways to use it (``--task-opt class_source=...``):

- ``classifier`` (default): images are synthesized through the classifier itself, then calibrate
  the detector's or segmentor's backbone;
- ``backbone_head``: the classifier's head on the task's own backbone (its last feature map averaged
  over positions, as Swin's head does), so images are synthesized through the fine-tuned backbone.
  Swin backbones only: a ViT/DeiT head reads the class token, which the dense backbones drop.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from harness.data.timm_weights import hub_checkpoint, load_weights
from harness.data.weights import read_state_dict
from harness.errors import HarnessError
from harness.plugin.task import ImagePrior
from harness.store.io import file_sha256

CLASS_SOURCES = ("classifier", "backbone_head")
HEAD_KEYS = ("head.fc", "head")  # a timm >= 0.9 classifier's head, then an official release's


@dataclass(frozen=True)
class ClassSource:
    """Which classifier gives the classes, from which weights, used how (``kind``: one of CLASS_SOURCES)."""

    kind: str
    classifier: str  # timm model name (with its pretrained tag)
    weights: Path
    weights_sha256: str

    def record(self) -> dict[str, str]:
        """What the record and the calibration-set cache key hold (the file by content, not by path)."""
        return {"kind": self.kind, "classifier": self.classifier, "weights_sha256": self.weights_sha256}


def resolve(kind: str, classifier: str, prior_classifier: str | None, backbone_type: str) -> ClassSource:
    """The class source a task's options give, or a HarnessError saying what is missing and how to supply it."""
    if kind == "backbone_head" and backbone_type != "SwinTransformer":
        raise HarnessError(f"class_source=backbone_head needs a Swin backbone (a {backbone_type}'s head reads the class "
                           "token, which the dense backbone drops); use class_source=classifier")
    if prior_classifier:
        weights = Path(prior_classifier).expanduser()
        if not weights.is_file():
            raise HarnessError(f"prior_classifier {weights} does not exist")
    else:
        weights = hub_checkpoint(classifier, instead="--task-opt prior_classifier=FILE")
    return ClassSource(kind, classifier, weights, file_sha256(weights)[:16])


def classifier_architecture(backbone: Mapping[str, Any]) -> dict[str, Any]:
    """timm keyword arguments of the classifier with the architecture of an mmdet/mmseg backbone config.

    Keys the config leaves out take the libraries' defaults (window 7, patch 4 for Swin; patch 16
    for ViT; MLP ratio 4, qkv bias).
    """
    kind = backbone["type"]
    common = {"mlp_ratio": backbone.get("mlp_ratio", 4), "qkv_bias": backbone.get("qkv_bias", True)}
    if kind == "SwinTransformer":
        return {**common, "embed_dim": backbone["embed_dims"], "depths": tuple(backbone["depths"]),
                "num_heads": tuple(backbone["num_heads"]), "window_size": backbone.get("window_size", 7),
                "patch_size": backbone.get("patch_size", 4)}
    if kind == "VisionTransformer":
        return {**common, "embed_dim": backbone["embed_dims"], "depth": backbone["num_layers"],
                "num_heads": backbone["num_heads"], "patch_size": backbone.get("patch_size", 16)}
    raise HarnessError(f"no timm classifier architecture is known for a {kind} backbone")


def build_classifier(source: ClassSource, backbone: Mapping[str, Any], prior: ImagePrior) -> nn.Module:
    """The classifier of ``backbone``'s architecture at the prior's size, weights loaded, reading images
    normalized as the task's ``prior`` (its own normalization folded into its patch embedding), frozen."""
    model = timm.create_model(source.classifier, pretrained=False, img_size=prior.input_size[1:],
                              **classifier_architecture(backbone))
    load_weights(model, source.classifier, source.weights)
    config = get_pretrained_cfg(source.classifier)
    fold_input_normalization(model.patch_embed.proj, prior, config.mean, config.std)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


@torch.no_grad()
def fold_input_normalization(conv: nn.Conv2d, prior: ImagePrior, mean: tuple[float, ...],
                             std: tuple[float, ...]) -> None:
    """Make ``conv``, which reads images normalized with ``mean``/``std``, read the ``prior``'s instead.

    Pixels p = x·s_task + m_task, and the classifier wants (p - m)/s = x·a + o with a = s_task/s and
    o = (m_task - m)/s per channel: scaling the weights by a and adding the weights' sums times o to
    the bias is exact for a convolution without padding (a patch embedding).
    """
    if tuple(prior.mean) == tuple(mean) and tuple(prior.std) == tuple(std):
        return
    if conv.padding not in ((0, 0), "valid"):
        raise HarnessError("the classifier's patch embedding pads its input; its normalization cannot be folded")
    task_mean, task_std = torch.tensor(prior.mean), torch.tensor(prior.std)
    scale, offset = task_std / torch.tensor(std), (task_mean - torch.tensor(mean)) / torch.tensor(std)
    shift = (conv.weight * offset.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    conv.weight.mul_(scale.view(1, -1, 1, 1))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift)
    else:
        conv.bias.add_(shift)


class BackboneHead(nn.Module):
    """A backbone's last feature map, averaged over positions, through a classifier's head (``backbone_head``)."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)[-1].mean(dim=(2, 3)))


def classifier_head(source: ClassSource) -> nn.Linear:
    """The classifier's head (a Linear over the pooled features), read from its weights file, frozen."""
    state = read_state_dict(source.weights, allowed=[argparse.Namespace])
    prefix = next((key for key in HEAD_KEYS if f"{key}.weight" in state), None)
    if prefix is None:
        expected = " or ".join(f"{key}.weight" for key in HEAD_KEYS)
        raise HarnessError(f"prior_classifier {source.weights} has no head ({expected})")
    weight = state[f"{prefix}.weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=f"{prefix}.bias" in state)
    head.load_state_dict({"weight": weight, **({"bias": state[f"{prefix}.bias"]} if head.bias is not None else {})})
    return head.requires_grad_(False).eval()
