"""Task ``imagenet``: ImageNet-1k val top-1/top-5 of timm's DeiT, ViT and Swin models (README, Tasks).

Weights come from ``--checkpoint``, the local Hugging Face hub cache or the hub
(:mod:`harness.data.timm_weights`), data from ``--data-root`` (or ``$IMAGENET_ROOT``) in the standard
folder layout. Val images are decoded once per eval transform into a shared cache
(:mod:`harness.data.image_folder.cache`); ``--task-opt eval_cache=false`` decodes in every evaluation instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from timm.data import ImageNetInfo

from harness.api import TASKS, ImageFolderOptions, ImageFolderTask, register_models
from harness.api.data import hub_checkpoint


@dataclass
class ImageNetOptions(ImageFolderOptions):
    """``data_root`` falls back to ``$IMAGENET_ROOT``."""

    root_variable = "IMAGENET_ROOT"


@lru_cache(maxsize=1)
def synset_index() -> dict[str, int]:
    """wnid -> ImageNet-1k class index from timm's synset list, so a partial copy keeps true labels."""
    return {wnid: index for index, wnid in enumerate(ImageNetInfo().label_names())}


@TASKS.register("imagenet")
class ImageNetTask(ImageFolderTask):
    """Top-1/top-5 on ``ROOT/val``; real calibration images come from ``ROOT/train`` only."""

    Options = ImageNetOptions
    num_classes = 1000
    dataset = "ImageNet"
    layout = "<wnid>/*.JPEG"
    class_folder = "an ImageNet-1k class folder (a wnid such as n01440764)"
    model_names = register_models("imagenet", {
        "deit_tiny_patch16_224": "timm DeiT-Ti/16, 224 px (5.7M params)",
        "deit_small_patch16_224": "timm DeiT-S/16, 224 px (22M params)",
        "deit_base_patch16_224": "timm DeiT-B/16, 224 px (86M params)",
        "vit_small_patch16_224": "timm ViT-S/16, 224 px, AugReg in21k -> in1k (22M params)",
        "vit_base_patch16_224": "timm ViT-B/16, 224 px, AugReg2 in21k -> in1k (86M params)",
        "swin_tiny_patch4_window7_224": "timm Swin-T, window 7, 224 px (28M params)",
        "swin_small_patch4_window7_224": "timm Swin-S, window 7, 224 px, in22k -> in1k (50M params)",
        "swin_base_patch4_window7_224": "timm Swin-B, window 7, 224 px, in22k -> in1k (88M params)",
    })

    def class_index(self) -> dict[str, int]:
        return synset_index()

    def default_checkpoint(self, model_name: str) -> Path:
        """The file timm's ``pretrained=True`` loads, from the hub cache or the hub."""
        return hub_checkpoint(model_name)
