"""ImageNet-1k in the standard folder layout (``ROOT/<split>/<wnid>/*.JPEG``) and timm's eval transform."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from timm.models import get_pretrained_cfg
from torch.utils.data import Dataset

from harness.errors import HarnessError
from harness.io import IMAGE_SUFFIXES

def data_config(model_name: str) -> dict:
    """Input size, mean/std, interpolation and crop pct of the model's default pretrained weights."""
    return resolve_data_config(pretrained_cfg=get_pretrained_cfg(model_name).to_dict())


def eval_transform(model_name: str) -> Callable[[Image.Image], torch.Tensor]:
    """timm's own eval preprocessing for the model (README, Tasks), so FP accuracy matches timm's tables."""
    return create_transform(**data_config(model_name))


@lru_cache(maxsize=1)
def synset_index() -> dict[str, int]:
    """wnid -> ImageNet-1k class index from timm's synset list, so a partial copy keeps true labels."""
    return {wnid: index for index, wnid in enumerate(ImageNetInfo().label_names())}


def labelled_images(split_dir: Path) -> list[tuple[Path, int]]:
    """Every image of ``split_dir/<wnid>/`` in sorted (deterministic) order, with its class index."""
    layout = f"expected the ImageNet layout {split_dir}/<wnid>/*.JPEG"
    if not split_dir.is_dir():
        raise HarnessError(f"{split_dir} does not exist; {layout}")
    classes = synset_index()
    samples = []
    for folder in sorted(path for path in split_dir.iterdir() if path.is_dir()):
        if folder.name not in classes:
            raise HarnessError(f"{folder} is not an ImageNet-1k class folder (a wnid such as n01440764); {layout}")
        samples += [(path, classes[folder.name]) for path in sorted(folder.iterdir())
                    if path.suffix.lower() in IMAGE_SUFFIXES]
    if not samples:
        raise HarnessError(f"no images in {split_dir}; {layout}")
    return samples


class LabelledImages(Dataset):
    """Decodes lazily, in the DataLoader's workers; RGB because a few ImageNet JPEGs are CMYK or grayscale."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label
