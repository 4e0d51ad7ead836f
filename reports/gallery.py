"""Calibration images for the report's gallery, read back from the generator cache of a results folder.

The cache (``RESULTS/cache/generators/<generator>/<key>.pt``, written by ``harness.runner``) holds
each bit-independent generator's images with the image prior that de-normalizes them, so the
gallery shows exactly what the calibrators saw, at no cost of regenerating.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMAGES_PER_ROW = 8


@dataclass(frozen=True)
class GalleryRow:
    """The first images a generator made for one model (lowest cached seed), as HWC pixels in [0, 1]."""

    model: str
    seed: int
    images: np.ndarray


def cached_galleries(results: Path, models: set[str]) -> dict[str, list[GalleryRow]]:
    """Generator name -> one row per model in ``models`` that has a cache entry, sorted by model."""
    chosen: dict[tuple[str, str], dict] = {}
    for path in sorted((Path(results) / "cache" / "generators").glob("*/*.pt")):
        entry = _load(path)
        if entry is None or entry.get("model") not in models:
            continue
        key = (path.parent.name, entry["model"])
        if key not in chosen or entry["seed"] < chosen[key]["seed"]:
            chosen[key] = entry
    galleries: dict[str, list[GalleryRow]] = {}
    for (generator, model), entry in sorted(chosen.items(), key=lambda item: item[0]):
        images = entry["prior"].denormalize(entry["calibration"].images[:IMAGES_PER_ROW].float())
        galleries.setdefault(generator, []).append(
            GalleryRow(model=model, seed=entry["seed"], images=images.permute(0, 2, 3, 1).numpy()))
    return galleries


def _load(path: Path) -> dict | None:
    """A cache entry, or None when torn or unreadable (the runner regenerates those; the gallery skips them)."""
    try:
        entry = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return None
    return entry if isinstance(entry, dict) and {"calibration", "prior", "model", "seed"} <= entry.keys() else None
