"""Train the digits miniature ViTs: the recipe behind the shipped weights, and the command that remakes them.

``python -m tasks.digits.train`` retrains both models into a scratch folder and reports how far they
are from the shipped ones (training is not bit-reproducible across CPUs, so a retrained model differs
a little); ``--ship`` replaces the shipped files and their manifest.
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from harness.api import progress_bar
from harness.api.data import read_state_dict, tensor_batches, topk_accuracy, write_state_dict
from tasks.digits.data import DigitsSplit, load_splits, normalize
from tasks.digits.model import build_model
from tasks.digits.shipped import MODEL_SEEDS, WEIGHTS_DIR, read_manifest, write_manifest


@dataclass(frozen=True)
class Recipe:
    """The recipe of the shipped models (test top-1 in ``weights/manifest.json``: 95.93 % / 98.70 % for seeds 0 / 1)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    rotation_deg: float = 12.0
    scale: float = 0.10
    shift: float = 0.15


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


def train(seed: int, recipe: Recipe) -> tuple[VisionTransformer, float]:
    """AdamW, linear warm-up then cosine decay per step, label smoothing, affine augmentation.

    Returns the model and the mean training loss of its last epoch.
    """
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
    epoch_losses: list[float] = []
    for _ in progress_bar(range(recipe.epochs), desc=f"train digits ViT seed {seed}", leave=False):
        order = torch.randperm(len(train_split.labels), generator=generator)
        epoch_losses = []
        for start in range(0, len(order), recipe.batch_size):
            index = order[start:start + recipe.batch_size]
            images = normalize(random_affine(train_split.pixels[index], recipe, generator))
            loss = F.cross_entropy(model(images), train_split.labels[index], label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            epoch_losses.append(loss.item())
    return model.eval(), sum(epoch_losses) / len(epoch_losses)


def test_top1(model: torch.nn.Module) -> float:
    test = load_splits()[1]
    return topk_accuracy(model, tensor_batches(normalize(test.pixels), test.labels, 256), topk=(1,))["top1"]


def distance(new: torch.nn.Module, old: torch.nn.Module) -> dict[str, float]:
    """How far a retrained model is from another: weights, and predictions on the test split."""
    new_state, old_state = new.state_dict(), old.state_dict()
    max_weight = max(float((new_state[k] - old_state[k]).abs().max()) for k in old_state)
    test = normalize(load_splits()[1].pixels)
    with torch.no_grad():
        agreement = (new(test).argmax(1) == old(test).argmax(1)).float().mean().item()
    return {"max_abs_weight_difference": max_weight, "test_argmax_agreement_percent": 100.0 * agreement}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.digits.train", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODEL_SEEDS), help="comma-separated digits models to retrain")
    parser.add_argument("--ship", action="store_true",
                        help=f"replace the shipped weights in {WEIGHTS_DIR} and their manifest")
    args = parser.parse_args(argv)
    manifest = read_manifest()
    out = WEIGHTS_DIR if args.ship else Path(tempfile.mkdtemp(prefix="digits_retrain_"))
    for name in args.models.split(","):
        seed, recipe = MODEL_SEEDS[name], Recipe()
        start = time.perf_counter()
        model, final_loss = train(seed, recipe)
        entry = {
            "seed": seed, "recipe": asdict(recipe), "test_top1": test_top1(model),
            "final_epoch_train_loss": final_loss, "train_seconds": round(time.perf_counter() - start, 1),
            "torch": torch.__version__, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "date": datetime.date.today().isoformat(),
        }
        path = out / f"{name}.safetensors"
        entry["sha256"] = write_state_dict(path, model)
        print(f"{name}: test top-1 {entry['test_top1']:.2f} %, last-epoch loss {final_loss:.4f}, "
              f"{entry['train_seconds']} s -> {path}")
        if name in manifest and not args.ship:
            shipped = build_model()
            shipped.load_state_dict(read_state_dict(WEIGHTS_DIR / manifest[name]["file"]))
            gap = distance(model, shipped.eval())
            print(f"  against the shipped model (test top-1 {manifest[name]['test_top1']:.2f} %): "
                  f"max |weight difference| {gap['max_abs_weight_difference']:.3g}, "
                  f"test predictions agree on {gap['test_argmax_agreement_percent']:.2f} %")
        manifest[name] = {"file": path.name, **entry}
    if args.ship:
        write_manifest(manifest)
        print(f"manifest written: {WEIGHTS_DIR / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
