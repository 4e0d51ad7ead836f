"""Calibration images for the report's gallery, read back from the generator cache of a results folder.

The cache (read through ``ResultStore.calibration_entries``) holds each bit-independent generator's
images with the image prior that de-normalizes them, so the gallery shows exactly what the
calibrators saw, at no cost of regenerating.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.store.calibration_cache import CachedCalibration
from harness.store.records import ResultStore

IMAGES_PER_ROW = 8


@dataclass(frozen=True)
class GalleryRow:
    """The first images a generator made for one model (lowest cached seed), as HWC pixels in [0, 1]."""

    model: str
    seed: int
    images: np.ndarray


def cached_galleries(results: Path, models: set[str]) -> dict[str, list[GalleryRow]]:
    """Generator name -> one row per model in ``models`` that has a cache entry, sorted by model."""
    chosen: dict[tuple[str, str], CachedCalibration] = {}
    for entry in ResultStore(Path(results)).calibration_entries():
        if entry.meta["model"] not in models:
            continue
        key = (entry.meta["generator"], entry.meta["model"])
        if key not in chosen or entry.meta["seed"] < chosen[key].meta["seed"]:
            chosen[key] = entry
    galleries: dict[str, list[GalleryRow]] = {}
    for (generator, model), entry in sorted(chosen.items(), key=lambda item: item[0]):
        images = entry.prior.denormalize(entry.calibration.images[:IMAGES_PER_ROW].float())
        galleries.setdefault(generator, []).append(
            GalleryRow(model=model, seed=entry.meta["seed"], images=images.permute(0, 2, 3, 1).numpy()))
    return galleries
