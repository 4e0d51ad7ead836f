"""Pieces the benchmark scripts share: fixed image-like inputs, the authors' commit (parity scripts), and the
shim that lets the authors' attention forward be called as the installed timm's blocks call it."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F


def smooth_images(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise at 1/16 resolution, upsampled bilinearly: image-like, spatially correlated inputs."""
    coarse = torch.randn(count, 3, max(2, size // 16), max(2, size // 16), generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def authors_commit(checkout: Path) -> str:
    result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown (not a git checkout)"


def without_mask(forward: Callable) -> Callable:
    """The authors' bound attention forward, callable the way the installed timm's blocks call it."""
    def call(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise SystemExit("the authors' attention forward has no mask")
        return forward(x)
    return call
