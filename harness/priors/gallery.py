"""PNG grids of calibration images, to look at what a generator made."""
from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import save_image

from harness.plugin.task import ImagePrior


def save_image_grid(images: Tensor, prior: ImagePrior, path: Path, nrow: int = 8, scale: int = 1) -> Path:
    """Write ``images`` (model inputs) as one PNG grid, de-normalized with the model's own mean/std.

    ``scale`` enlarges each image by pixel repetition (16 px digits are hard to see otherwise).
    """
    pixels = prior.denormalize(images.detach().float().cpu())
    if scale > 1:
        pixels = F.interpolate(pixels, scale_factor=scale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(pixels, path, nrow=nrow)
    return path
