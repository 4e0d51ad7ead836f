"""Images per second of the imagenet task's evaluation path, on a synthetic ImageNet-layout folder.

Writes JPEGs at ImageNet-like sizes (shorter side about 300-500 px, ~100 KB) into the 1000 class
folders of a temporary ``val/``, then prints images/s for: decoding + timm's eval transform alone,
building the shared uint8 cache (a grid's first evaluation), reading it back (every later one), the
forward pass alone of the FP model and its W8A8 / W4A8 fake-quant copies on cached batches (taking turns,
best of 3 rounds, as a cell evaluates: heap reused, temporaries quantized in place), and
whole evaluations (``ImageNetTask.evaluate``) of a first cell and a later cell, for DeiT-S and Swin-T
at 224 px. Random init: no weights are needed. The harness cache goes to the temporary folder too.

    PYTHONPATH=. python benchmarks/imagenet_throughput.py               # ~3000 images, a few minutes on 2 cores
    PYTHONPATH=. python benchmarks/imagenet_throughput.py --quick       # tiny sizes: checks that it runs
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo
from torch.utils.data import DataLoader

from harness.data.image_folder import cache
from harness.data.image_folder.data import LabelledImages, eval_transform
from harness.plugin.calibrators import MinMaxCalibrator
from harness.plugin.method import CalibrationContext, CalibrationSet
from harness.progress import set_progress
from harness.quant.bits import parse_bits
from harness.quant.convert import QuantConfig, quantize_model
from harness.quant.modules import in_place_evaluation
from harness.run.memory import reused_heap
from tasks.imagenet import ImageNetOptions, ImageNetTask

MODELS = ("deit_small_patch16_224", "swin_tiny_patch4_window7_224")
QUICK_ARCHITECTURE = {"deit_small_patch16_224": {"depth": 1}, "swin_tiny_patch4_window7_224": {"depths": (1, 1, 1, 1)}}


@dataclass(frozen=True)
class Sizes:
    images: int  # JPEGs written
    short_side: tuple[int, int]  # range of the shorter side, px
    eval_images: int  # images of the model measurements and of the whole evaluations
    batch: int
    rounds: int  # of the forward measurements, best kept
    quick: bool


FULL = Sizes(images=3000, short_side=(300, 500), eval_images=128, batch=32, rounds=3, quick=False)
QUICK = Sizes(images=24, short_side=(40, 80), eval_images=8, batch=4, rounds=1, quick=True)


def write_synthetic_imagenet(split: Path, count: int, short_side: tuple[int, int], seed: int = 0) -> float:
    """``count`` JPEGs spread over the 1000 class folders of ``split``; returns their mean size in KB.

    Smooth colour fields plus fine noise, so files compress (and decode) about as photographs do.
    """
    rng = np.random.default_rng(seed)
    wnids = ImageNetInfo().label_names()
    for wnid in wnids:
        (split / wnid).mkdir(parents=True, exist_ok=True)
    total = 0
    for index in range(count):
        short = int(rng.integers(*short_side))
        long = int(short * rng.uniform(1.0, 1.5))
        height, width = (short, long) if rng.random() < 0.75 else (long, short)
        coarse = rng.uniform(0, 255, size=(max(2, height // 32), max(2, width // 32), 3)).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(field + rng.normal(0, 12, size=field.shape), 0, 255).astype(np.uint8)
        path = split / wnids[index % len(wnids)] / f"synthetic_{index:06d}.JPEG"
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total / count / 1024


def rate(count: int, run: Callable[[], Any]) -> float:
    """Images per second of ``run`` over ``count`` images."""
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def drain(loader: DataLoader) -> None:
    for _ in loader:
        pass


def calibrated(model: torch.nn.Module, bits: str, images: torch.Tensor) -> torch.nn.Module:
    spec = parse_bits(bits)
    qmodel = quantize_model(model, spec, QuantConfig())
    MinMaxCalibrator().calibrate(qmodel, CalibrationContext(
        fp_model=model, calibration=CalibrationSet(images), bits=spec, seed=0, device=torch.device("cpu")))
    return qmodel


def measure(workdir: Path, sizes: Sizes, workers: int) -> dict[str, Any]:
    """Every figure the benchmark prints, as a dict."""
    os.environ["DFQ_HARNESS_CACHE"] = str(workdir / "harness_cache")
    root = workdir / "imagenet"
    start = time.perf_counter()
    mean_kb = write_synthetic_imagenet(root / "val", sizes.images, sizes.short_side)
    figures: dict[str, Any] = {"images": sizes.images, "mean_kb": mean_kb, "write_s": time.perf_counter() - start,
                               "workers": workers, "threads": torch.get_num_threads(), "models": {}}
    samples = ImageNetTask().labelled_images(root / "val")
    transform = eval_transform(MODELS[0])
    parts = cache.split_transform(transform)
    decoding = DataLoader(LabelledImages(samples, transform), batch_size=64, num_workers=workers)
    figures["decode_transform"] = rate(len(samples), lambda: drain(decoding))
    entry: list[cache.PreprocessedImages] = []
    figures["cache_build"] = rate(len(samples), lambda: entry.append(
        cache.preprocessed_images(samples, parts.pixels, root / "val", workers)))
    figures["cache_hit"] = rate(len(samples), lambda: drain(entry[0].loader(64, parts.tensor, min(4, workers))))
    task = ImageNetTask(ImageNetOptions(data_root=str(root), batch_size=sizes.batch, num_workers=workers))
    keys = {cache.cache_key(samples, cache.split_transform(eval_transform(name)).pixels, root / "val")
            for name in MODELS}
    figures["one_entry_for_all_models"] = len(keys) == 1
    for name in MODELS:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **(QUICK_ARCHITECTURE[name] if sizes.quick else {})).eval()
        batches = [images for images, _ in entry[0].loader(sizes.batch, parts.tensor)]
        batches = torch.cat(batches)[:sizes.eval_images].split(sizes.batch)
        models = {"FP": model, **{bits.upper(): calibrated(model, bits, batches[0]) for bits in ("w8a8", "w4a8")}}
        row: dict[str, float] = {}
        with torch.no_grad(), reused_heap(), in_place_evaluation():  # as a grid's cell evaluates
            for candidate in models.values():
                candidate(batches[0])  # warm-up: weight caches, compiled kernels
            for _ in range(sizes.rounds):  # the models take turns, so they share the machine's conditions
                for label, candidate in models.items():
                    measured = rate(sum(map(len, batches)), lambda: [candidate(batch) for batch in batches])
                    row[label] = max(row.get(label, 0.0), measured)
        # a grid's first cell decodes its images into an empty cache, a later cell reads them back
        os.environ["DFQ_HARNESS_CACHE"] = str(workdir / f"harness_cache_{name}")
        row["first cell"] = rate(sizes.eval_images, lambda: task.evaluate(model, name, limit=sizes.eval_images))
        row["later cell"] = rate(sizes.eval_images, lambda: task.evaluate(model, name, limit=sizes.eval_images))
        figures["models"][name] = row
    return figures


def report(figures: dict[str, Any]) -> str:
    lines = [f"synthetic ImageNet val: {figures['images']} JPEGs over 1000 class folders, {figures['mean_kb']:.0f} KB "
             f"on average (written in {figures['write_s']:.0f} s); {figures['workers']} loader workers, "
             f"{figures['threads']} torch threads",
             "data alone, images/s:",
             f"  decode + eval transform           {figures['decode_transform']:8.1f}",
             f"  cache build (a grid's first use)  {figures['cache_build']:8.1f}",
             f"  cache hit (every later cell)      {figures['cache_hit']:8.1f}   "
             f"({figures['cache_hit'] / figures['cache_build']:.1f}x the build)",
             "models at 224 px, random init, images/s (forward on cached batches; whole evaluations):"]
    for name, row in figures["models"].items():
        lines.append(f"  {name:30s} FP {row['FP']:7.1f}   "
                     f"W8A8 {row['W8A8']:7.1f} ({row['FP'] / row['W8A8']:.2f}x FP's time)"
                     f"   W4A8 {row['W4A8']:7.1f} ({row['FP'] / row['W4A8']:.2f}x)   "
                     f"first cell {row['first cell']:7.1f}   later cell {row['later cell']:7.1f}")
    shared = "one cache entry serves" if figures["one_entry_for_all_models"] else "separate cache entries for"
    lines.append(f"{shared} {' and '.join(figures['models'])} (their decode-side transforms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a check that the benchmark runs)")
    parser.add_argument("--images", type=int, help="JPEGs to write (default 3000, quick 24)")
    parser.add_argument("--eval-images", type=int, help="images per model measurement (default 128, quick 8)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="loader workers")
    parser.add_argument("--workdir", type=Path, help="keep the synthetic folder and cache here (default: a temp dir)")
    args = parser.parse_args(argv)
    set_progress(False)
    sizes = QUICK if args.quick else FULL
    sizes = dataclasses.replace(sizes, images=args.images or sizes.images,
                                eval_images=args.eval_images or sizes.eval_images)
    previous_cache = os.environ.get("DFQ_HARNESS_CACHE")
    try:
        if args.workdir:
            figures = measure(args.workdir, sizes, args.workers)
        else:
            with tempfile.TemporaryDirectory(prefix="imagenet_throughput_") as workdir:
                figures = measure(Path(workdir), sizes, args.workers)
    finally:
        if previous_cache is None:
            os.environ.pop("DFQ_HARNESS_CACHE", None)
        else:
            os.environ["DFQ_HARNESS_CACHE"] = previous_cache
    print(report(figures))
    return figures


if __name__ == "__main__":
    main()
