"""Pieces the benchmark scripts share: fixed image-like inputs; for the parity scripts, their common
arguments, the twin random-init timm models (ours and the authors' copy), the authors' commit, how a fixture
is written, and the shim that lets the authors' attention forward be called as the installed timm's blocks
call it."""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn


# timm keyword arguments of the random-init models the parity scripts compare at full size
FULL_SIZE = {
    "deit_tiny": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "deit_small": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "swin_tiny": dict(img_size=224, patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2),
                      num_heads=(3, 6, 12, 24)),
}
# the RepQ-ViT and PTQ4ViT fixtures' configurations (PSAQ-ViT's fixtures, written earlier, keep their own
# two-stage Swin). Head dimension 16: timm's 1/sqrt(d) is a power of two, so scaling q before the product
# (timm) or the product after it (the authors' DeiT code) gives the same floats.
SMALL_FIXTURES = {
    # DeiT's code paths at 32 px
    "deit_small_config": dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10),
    # Swin-T's code paths at 32 px: 16x16 tokens, window 4; stages 1 and 2 shift their odd blocks (with
    # the mask), stage 3 (4x4 tokens, one window) does not, as Swin-T's last stage; two patch mergings
    "swin_small_config": dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2, 2),
                              num_heads=(1, 2, 4), num_classes=10),
}


def heavy_tailed_values(count: int, seed: int) -> torch.Tensor:
    """``count`` float32 values with a power-law tail (P(|x| > t) = 1 / (1 + t)^2), the same bits on any
    machine: splitmix64 of seed·2^32 + i + 1 gives a sign and u = (m + 1/2)·2^-24, m < 2^24, and
    x = ±(1/sqrt(u) - 1) is computed with correctly rounded float64 operations, then rounded to float32.
    Parity fixtures regenerate such inputs instead of storing them."""
    state = np.arange(1, count + 1, dtype=np.uint64)
    state += np.uint64(seed << 32)
    state *= np.uint64(0x9E3779B97F4A7C15)
    for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        state ^= state >> np.uint64(shift)
        state *= np.uint64(factor)
    state ^= state >> np.uint64(31)
    values = (state >> np.uint64(40)).astype(np.float64)
    values += 0.5
    values *= 2.0 ** -24
    np.sqrt(values, out=values)
    np.divide(1.0, values, out=values)
    values -= 1.0
    np.negative(values, out=values, where=(state & np.uint64(1)).astype(bool))
    return torch.from_numpy(values.astype(np.float32))


def timm_class(name: str) -> type[nn.Module]:
    """The timm class of a configuration of :data:`FULL_SIZE` or :data:`SMALL_FIXTURES` (by its name)."""
    return SwinTransformer if name.startswith("swin") else VisionTransformer


def twin_models(name: str, kwargs: dict, seed: int, dtype: torch.dtype) -> tuple[nn.Module, nn.Module, dict]:
    """(ours, the authors' copy, the float32 weights): a random-init timm model drawn after
    ``torch.manual_seed(seed)``, and a second instance with the same weights, both in eval mode and ``dtype``."""
    torch.manual_seed(seed)
    cls = timm_class(name)
    model = cls(**kwargs).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(dtype)
    reference = cls(**kwargs).eval()
    reference.load_state_dict(weights)
    reference.to(dtype)
    return model, reference, weights


def smooth_images(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise at 1/16 resolution, upsampled bilinearly: image-like, spatially correlated inputs."""
    coarse = torch.randn(count, 3, max(2, size // 16), max(2, size // 16), generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def parity_parser(description: str, repository: str, models: str | None, models_help: str, bits: str,
                  eval_images: int) -> argparse.ArgumentParser:
    """The arguments every parity script takes; each adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--authors", type=Path, required=True, help=f"checkout of {repository}")
    parser.add_argument("--models", default=models, help=models_help)
    parser.add_argument("--bits", default=bits)
    parser.add_argument("--calib-images", type=int, default=32)
    parser.add_argument("--eval-images", type=int, default=eval_images)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-fixtures", type=Path, help="write the test fixtures (small configurations) here")
    return parser


def save_fixture(directory: Path, name: str, tensors: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                 meta: dict) -> None:
    """``NAME.safetensors`` (images, the authors' results, the model's weights) and ``NAME.json`` (what made them)."""
    save_file({**tensors, **{f"weights.{k}": v.contiguous() for k, v in weights.items()}},
              str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {directory / name}.safetensors/.json")


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
