"""Eval images decoded once per eval transform: a shared uint8 copy, memory-mapped (README, Tasks).

timm's eval transform is a decode-side part on PIL images (resize, centre crop) followed by
``to_tensor`` and ``Normalize``. The decode-side part's output is stored as an (N, H, W, 3) uint8
array in the harness cache; evaluation reads batches from it and applies the tensor side with the
same operations ``to_tensor`` and ``Normalize`` use, so the floats are those of decoding. Models
whose decode-side parts agree share one copy (all DeiT, ViT and Swin models of ``imagenet``: resize
to 248 px, bicubic, crop 224). The key covers that part, the files (relative path, label, size, modification
time) and the decoder's versions; a build is locked and renamed into place, so concurrent runners
build it once and never read half of one.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
import torch
from PIL import Image, features
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from timm.data.transforms import MaybeToTensor

from harness.errors import HarnessError
from harness.progress import progress_bar
from harness.store.io import config_hash, current_umask, file_lock, write_json
from harness.store.paths import cache_dir
from harness.store.schema import fields, integer, list_of, read_json

FORMAT = 1  # bump when the stored layout changes
IMAGES, LABELS, META = "images.npy", "labels.npy", "meta.json"


@dataclass(frozen=True)
class SplitTransform:
    """An eval transform as its decode-side part (PIL in, PIL out) and its tensor part (batched floats)."""

    pixels: transforms.Compose
    tensor: transforms.Compose


def split_transform(transform: Callable) -> SplitTransform | None:
    """The two parts of a ``Compose`` with one ``ToTensor`` step; None for any other transform (not cached)."""
    steps = getattr(transform, "transforms", None) if isinstance(transform, transforms.Compose) else None
    if steps is None:
        return None
    cuts = [i for i, step in enumerate(steps) if isinstance(step, (transforms.ToTensor, MaybeToTensor))]
    if len(cuts) != 1 or not all(isinstance(step, transforms.Normalize) for step in steps[cuts[0] + 1:]):
        return None
    return SplitTransform(transforms.Compose(steps[:cuts[0]]), transforms.Compose(steps[cuts[0] + 1:]))


def batch_to_tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) floats in [0, 1] with torchvision's ``to_tensor`` operations
    (channels first, contiguous, then a true division by 255), so every value is the decoded one's."""
    pixels = torch.as_tensor(pixels)
    return pixels.permute(0, 3, 1, 2).contiguous().to(dtype=torch.get_default_dtype()).div(255)


def decoder_versions() -> dict[str, str | None]:
    """Pillow and its JPEG library: another decoder may produce other pixels from the same file."""
    turbo = features.version_feature("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else None
    return {"pillow": PIL.__version__, "jpeg": features.version("jpg"), "libjpeg_turbo": turbo}


def cache_key(samples: list[tuple[Path, int]], pixels: transforms.Compose, split_dir: Path) -> str:
    """What the stored pixels depend on: the decode-side transform, the decoder and every file."""
    files = []
    for path, label in samples:
        stat = path.stat()
        files.append([str(path.relative_to(split_dir)), label, stat.st_size, stat.st_mtime_ns])
    return config_hash({"format": FORMAT, "transform": repr(pixels), "decoder": decoder_versions(), "files": files},
                       length=24)


class _DecodedPixels(Dataset):
    """Decodes one image and applies the decode-side transform: what the cache stores."""

    def __init__(self, samples: list[tuple[Path, int]], pixels: Callable[[Image.Image], Image.Image]) -> None:
        self.samples, self.pixels = samples, pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> np.ndarray:
        path, _ = self.samples[index]
        with Image.open(path) as image:
            return np.asarray(self.pixels(image.convert("RGB")), dtype=np.uint8)


class PreprocessedImages:
    """A finished cache entry: images (N, H, W, 3) uint8 memory-mapped, labels (N,) int64."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.images = np.load(directory / IMAGES, mmap_mode="r")
        self.labels = np.load(directory / LABELS)

    def __len__(self) -> int:
        return len(self.labels)

    def loader(self, batch_size: int, tensor: Callable[[torch.Tensor], torch.Tensor],
               num_workers: int = 0) -> DataLoader:
        """(images, labels) batches in file order, normalized by the tensor part (in workers if any)."""
        return DataLoader(_CachedBatches(self.directory, batch_size, tensor), batch_size=None,
                          num_workers=num_workers)


class _CachedBatches(Dataset):
    """Batch ``i`` of a cache entry; each worker maps the file itself (a memory map is not sent to workers)."""

    def __init__(self, directory: Path, batch_size: int, tensor: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.directory, self.batch_size, self.tensor = directory, batch_size, tensor
        self.labels = np.load(directory / LABELS)
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._images is None:  # copy-on-write: writable for torch, though nothing writes
            self._images = np.load(self.directory / IMAGES, mmap_mode="c")
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        pixels = torch.from_numpy(np.ascontiguousarray(self._images[rows]))
        return self.tensor(batch_to_tensor(pixels)), torch.from_numpy(self.labels[rows])


def preprocessed_images(samples: list[tuple[Path, int]], pixels: transforms.Compose, split_dir: Path,
                        num_workers: int, root: Path | None = None) -> PreprocessedImages:
    """The cache entry for these files and this decode-side transform, built first if missing.

    Built under a lock into a hidden folder that is renamed into place when complete: a runner that
    finds the entry reads a finished one, and one that arrives during a build waits for it.
    """
    root = root or cache_dir() / "imagenet_eval"
    key = cache_key(samples, pixels, split_dir)
    final = root / key
    if final.is_dir() and entry_problem(final, len(samples)) is None:
        return PreprocessedImages(final)
    with file_lock(root / f"{key}.lock", holder=f"pid {os.getpid()}"):
        if final.is_dir():  # built while we waited, or found unusable: rebuilt once, under the lock
            if (problem := entry_problem(final, len(samples))) is None:
                return PreprocessedImages(final)
            print(f"warning: eval cache entry {final} is not usable ({problem}); rebuilding it",
                  file=sys.stderr, flush=True)
            shutil.rmtree(final)
        for leftover in root.glob(f".{key}.*"):  # a build that died (we hold the lock: nobody else is building)
            shutil.rmtree(leftover, ignore_errors=True)
        building = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}."))
        building.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; a shared cache follows the user's umask
        try:
            _build(building, samples, pixels, split_dir, num_workers)
            os.replace(building, final)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return PreprocessedImages(final)


_META = fields({"format": integer, "count": integer, "shape": list_of(integer)}, required=("format", "count", "shape"))


def entry_problem(directory: Path, count: int) -> str | None:
    """Why a finished entry is not what :func:`_build` wrote for ``count`` files (a truncated or edited
    ``images.npy``, labels of another length), or None. Read as evaluation reads it, memory-mapped, so a
    bad entry is found before any cell evaluates, instead of failing every cell that uses it."""
    meta, problem = read_json(directory / META)
    if problem is not None or (problem := _META(meta, META)) is not None:
        return problem
    if meta["format"] != FORMAT or meta["count"] != count:
        return f"{META} says format {meta['format']} with {meta['count']} images, expected format {FORMAT} with {count}"
    expected = {IMAGES: ((count, *meta["shape"]), np.uint8, "r"), LABELS: ((count,), np.int64, None)}
    for name, (shape, dtype, mmap_mode) in expected.items():
        try:
            array = np.load(directory / name, mmap_mode=mmap_mode)
        except (OSError, ValueError, EOFError) as error:
            return f"{name} unreadable ({str(error).strip()[:80] or type(error).__name__}; truncated or replaced)"
        if array.shape != shape or array.dtype != dtype:
            return f"{name} holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}"
    return None


def _build(directory: Path, samples: list[tuple[Path, int]], pixels: transforms.Compose, split_dir: Path,
           num_workers: int) -> None:
    loader = DataLoader(_DecodedPixels(samples, pixels), batch_size=64, num_workers=num_workers, collate_fn=_stacked)
    images, start = None, 0
    for batch in progress_bar(loader, desc=f"decode {split_dir.name} once for the eval cache", total=len(loader),
                              unit="batch", leave=False):
        if images is None:
            if batch.ndim != 4 or batch.shape[3] != 3:
                raise HarnessError(f"the eval transform's decode-side part gave arrays of shape {batch.shape[1:]}, "
                                   "not (H, W, 3)")
            images = np.lib.format.open_memmap(directory / IMAGES, mode="w+", dtype=np.uint8,
                                               shape=(len(samples), *batch.shape[1:]))
        if batch.shape[1:] != images.shape[1:]:
            raise HarnessError(f"the eval transform's output size varies ({batch.shape[1:]} vs {images.shape[1:]})")
        images[start:start + len(batch)] = batch
        start += len(batch)
    images.flush()
    shape = list(images.shape[1:])
    del images
    np.save(directory / LABELS, np.array([label for _, label in samples], dtype=np.int64))
    write_json(directory / META, {"format": FORMAT, "count": len(samples), "shape": shape,
                                  "transform": repr(pixels), "decoder": decoder_versions(), "split": str(split_dir)})


def _stacked(arrays: list[np.ndarray]) -> np.ndarray:
    if len({array.shape for array in arrays}) > 1:
        raise HarnessError(f"the eval transform's output size varies ({sorted({a.shape for a in arrays})})")
    return np.stack(arrays)
