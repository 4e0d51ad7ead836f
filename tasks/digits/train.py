"""Train the digits miniature ViTs once and cache them in the user cache directory."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from harness.progress import progress_bar

from harness.io import config_hash, file_lock, save_torch
from harness.paths import cache_dir
from tasks.digits.data import DigitsSplit, load_splits, normalize


@dataclass(frozen=True)
class Recipe:
    """The training recipe measured in the core issue (98.9 % / 99.4 % test top-1 for seeds 0 / 1)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    rotation_deg: float = 12.0
    scale: float = 0.10
    shift: float = 0.15


def build_model() -> VisionTransformer:
    """img 16, patch 4 (16 patches), dim 64, depth 4, 4 heads, mlp 4, qkv bias, drop-path 0.1."""
    return VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4,
        num_heads=4, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.1,
    )


def checkpoint_path(seed: int, recipe: Recipe = Recipe()) -> Path:
    return cache_dir() / "digits" / f"vit_seed{seed}_{config_hash(asdict(recipe), 10)}.pt"


def trained_checkpoint(seed: int, recipe: Recipe = Recipe()) -> Path:
    """The cached checkpoint for ``seed``, training it first if no process has yet."""
    path = checkpoint_path(seed, recipe)
    with file_lock(path.with_suffix(".lock")):
        if not path.exists():
            model = train(seed, recipe)
            save_torch(path, {"model": model.state_dict(), "seed": seed, "recipe": asdict(recipe)})
    return path


def random_affine(pixels: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """Rotation, isotropic scale and shift per image, zero (background) padding."""
    n = pixels.shape[0]

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * bound

    angle = uniform(math.radians(recipe.rotation_deg))
    scale = 1 + uniform(recipe.scale)
    shift = torch.stack([uniform(2 * recipe.shift), uniform(2 * recipe.shift)], dim=1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, align_corners=False, padding_mode="zeros")


def train(seed: int, recipe: Recipe) -> VisionTransformer:
    """AdamW, linear warm-up then cosine decay per step, label smoothing, affine augmentation."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model()
    train_split: DigitsSplit = load_splits()[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(train_split.labels) / recipe.batch_size)
    total, warmup = recipe.epochs * steps_per_epoch, recipe.warmup_epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / warmup if step < warmup
        else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))),
    )
    model.train()
    for _ in progress_bar(range(recipe.epochs), desc=f"train digits ViT seed {seed}", leave=False):
        order = torch.randperm(len(train_split.labels), generator=generator)
        for start in range(0, len(order), recipe.batch_size):
            index = order[start:start + recipe.batch_size]
            images = normalize(random_affine(train_split.pixels[index], recipe, generator))
            loss = F.cross_entropy(model(images), train_split.labels[index], label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()
