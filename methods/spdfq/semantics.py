"""SPDFQ's two label-side parts (docs/methods.md, SPDFQ): multi-semantic crops (MSR) and soft labels (SL).

MSR regions: the image is split into a grid of ceil(sqrt(K_MSR))² cells (2 x 2 for K_MSR = 4); each
iteration picks m in {1..K_MSR} distinct cells per image and, inside each, a random square box of side
between half and all of the cell. Boxes in distinct cells cannot overlap, so the paper's
non-overlapping patches hold by construction. How patches are sized and placed is unpublished;
this is our choice. Each cell has its own target, drawn once per image, so a region is pushed
towards the same class at every iteration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Region:
    """A crop of image ``image``: rows [top, top + size), columns [left, left + size), in grid cell ``cell``."""

    image: int
    cell: int
    top: int
    left: int
    size: int


def cells_per_side(max_patches: int) -> int:
    return math.ceil(math.sqrt(max_patches))


def msr_regions(batch_size: int, height: int, width: int, max_patches: int,
                generator: torch.Generator) -> list[Region]:
    """docs/methods.md, SPDFQ, MSR: m ~ U{1..max_patches} non-overlapping random patches of every image."""
    side = cells_per_side(max_patches)
    cell_h, cell_w = height // side, width // side
    regions = []
    for image in range(batch_size):
        count = int(torch.randint(1, max_patches + 1, (), generator=generator))
        for cell in torch.randperm(side * side, generator=generator)[:count].tolist():
            low = max(1, min(cell_h, cell_w) // 2)
            size = int(torch.randint(low, min(cell_h, cell_w) + 1, (), generator=generator))
            top = (cell // side) * cell_h + int(torch.randint(cell_h - size + 1, (), generator=generator))
            left = (cell % side) * cell_w + int(torch.randint(cell_w - size + 1, (), generator=generator))
            regions.append(Region(image, cell, top, left, size))
    return regions


def crop_and_resize(images: Tensor, regions: list[Region]) -> Tensor:
    """Each region cropped and resized (bilinear) to the input size; gradients reach only the region."""
    size = images.shape[-2:]
    crops = [images[r.image:r.image + 1, :, r.top:r.top + r.size, r.left:r.left + r.size] for r in regions]
    return torch.cat([F.interpolate(crop, size=size, mode="bilinear", align_corners=False) for crop in crops])


def soft_targets(labels: Tensor, num_classes: int, generator: torch.Generator,
                 logit_range: tuple[float, float] = (5.0, 10.0)) -> Tensor:
    """docs/methods.md, SPDFQ, SL: T = softmax(Z), Z = 0 except Z[y] ~ U(logit_range) -> (*labels.shape, num_classes)."""
    low, high = logit_range
    logits = torch.zeros(*labels.shape, num_classes)
    values = low + (high - low) * torch.rand(labels.shape, generator=generator)
    return logits.scatter(-1, labels.unsqueeze(-1), values.unsqueeze(-1)).softmax(dim=-1)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """-Σ_c T_c log softmax(logits)_c, averaged over the batch; equals cross-entropy for one-hot T."""
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
