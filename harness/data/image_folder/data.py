"""Labelled images in the class-folder layout (``SPLIT/<class>/<image>``) and timm's eval transform."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models import get_pretrained_cfg
from torch.utils.data import Dataset

from harness.errors import HarnessError
from harness.store.io import IMAGE_SUFFIXES


def data_config(timm_name: str) -> dict:
    """Input size, mean/std, interpolation and crop pct of the timm model's default pretrained weights."""
    return resolve_data_config(pretrained_cfg=get_pretrained_cfg(timm_name).to_dict())


def eval_transform(timm_name: str) -> Callable[[Image.Image], torch.Tensor]:
    """timm's own eval preprocessing for the model, so FP accuracy matches timm's tables."""
    return create_transform(**data_config(timm_name))


def labelled_images(split_dir: Path, classes: Mapping[str, int] | None, layout: str,
                    class_folder: str = "a class folder") -> list[tuple[Path, int]]:
    """Every image of ``split_dir/<class>/`` in sorted (deterministic) order, with its class index.

    ``classes`` maps folder names to indices (a fixed label list keeps true labels on a partial copy);
    None numbers the split's own folders in sorted order, as torchvision's ``ImageFolder`` does.
    ``layout`` and ``class_folder`` describe what is expected in the errors.
    """
    expected = f"expected the layout {split_dir}/{layout}"
    if not split_dir.is_dir():
        raise HarnessError(f"{split_dir} does not exist; {expected}")
    folders = sorted(path for path in split_dir.iterdir() if path.is_dir())
    classes = classes if classes is not None else {folder.name: index for index, folder in enumerate(folders)}
    samples = []
    for folder in folders:
        if folder.name not in classes:
            raise HarnessError(f"{folder} is not {class_folder}; {expected}")
        samples += [(path, classes[folder.name]) for path in sorted(folder.iterdir())
                    if path.suffix.lower() in IMAGE_SUFFIXES]
    if not samples:
        raise HarnessError(f"no images in {split_dir}; {expected}")
    return samples


class LabelledImages(Dataset):
    """Decodes lazily, in the DataLoader's workers; RGB because some JPEGs are CMYK or grayscale."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label
