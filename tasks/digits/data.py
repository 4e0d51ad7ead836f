"""scikit-learn's bundled 8x8 digits as a 16x16, one-channel image task (pixels / 16)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

IMAGE_SIZE = 16
MEAN, STD = (0.5,), (0.5,)  # normalized pixels lie in [-1, 1]


@dataclass(frozen=True)
class DigitsSplit:
    """Pixels in [0, 1], shape (N, 1, 16, 16), and integer labels."""

    pixels: torch.Tensor
    labels: torch.Tensor


@lru_cache(maxsize=1)
def load_splits() -> tuple[DigitsSplit, DigitsSplit]:
    """The fixed stratified 70/30 train/test split (random_state 0), as README, Tasks describes it."""
    digits = load_digits()
    pixels = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    pixels = F.interpolate(pixels, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=0.3, stratify=labels.numpy(), random_state=0
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return DigitsSplit(pixels[train_idx], labels[train_idx]), DigitsSplit(pixels[test_idx], labels[test_idx])


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - MEAN[0]) / STD[0]
