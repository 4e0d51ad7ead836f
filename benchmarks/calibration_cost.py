"""Calibration cost of each calibrator on one random-init timm model: seconds, peak memory, ratio to min-max.

    PYTHONPATH=. python benchmarks/calibration_cost.py --model deit_small_patch16_224 --images 8 \\
        --bits w4a4 --calib minmax,repq,ptq4vit,adalog,aphq,fimaq [--steps 10] \\
        [--calib-opt NAME.KEY=VALUE ...] [--threads N] [--json PATH]

The same calibration images (smooth random fields at the model's input size) and the same FP
weights for every calibrator; each calibrator runs with its defaults (the authors' settings,
docs/methods.md), or with what ``--calib-opt`` overrides (``aphq.iterations=100``, as the grid's
``--calib-opt`` reads it), on a fresh ``standard``-profile quantized copy, after one untimed min-max
run that compiles the fused kernels. ``--model toy_vit`` is a 2-block ViT at 32 px for rehearsals.

Measured, per calibration run: wall-clock seconds of ``calibrate()``; the peak resident memory of the
process while it ran (``harness.run.peak_memory.PeakMemory``, sampled every 20 ms) and its rise over
the resident memory just before (freed memory is handed back to the OS first where glibc allows,
so an earlier calibrator's leftovers do not count); the top-1 agreement of the calibrated model's
logits with the FP model's on 16 other images (random init: a sanity figure, not accuracy).
Min-max always runs first, as the reference of the ratios.

Estimated, never measured: the reconstruction calibrators' step counts (``STEP_OPTIONS``: APHQ-ViT's
per-block ``iterations`` and ``mlp_iterations``, FIMA-Q's ``iterations``; 20,000 each by default)
cannot run on a CPU in minutes. When a step count exceeds ``--steps K``, the calibrator runs twice,
with every step option at 1 and at K (1, not 0: at 0 the reconstruction and its per-block set-up
are skipped, and the set-up would be charged to the steps), and the time at the configured counts
is the line through both, t(1) + (t(K) - t(1)) / (K - 1) x (steps - 1). Its row prints the K-step
run's measured figures beside that estimate, labelled "estimated from 1 and K steps"; the peak
memory and the agreement are the K-step run's (steps add time, not memory). Calibration time grows
about linearly with ``--images``.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import timm
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.errors import HarnessError  # noqa: E402
from harness.plugin.method import CalibrationContext, CalibrationSet  # noqa: E402
from harness.plugin.options import build_options, options_dict, parse_assignments  # noqa: E402
from harness.plugin.registry import CALIBRATORS  # noqa: E402
from harness.progress import set_progress  # noqa: E402
from harness.quant.bits import parse_bits  # noqa: E402
from harness.quant.convert import QuantConfig, quantize_model  # noqa: E402
from harness.run.peak_memory import PeakMemory  # noqa: E402
from parity_kit import smooth_images  # noqa: E402

# The options that count optimisation steps, per calibrator: what the estimate extrapolates
# (methods/aphq_vit/calibrator.py, methods/fima_q/calibrator.py; docs/methods.md).
STEP_OPTIONS = {"aphq": ("iterations", "mlp_iterations"), "fimaq": ("iterations",)}
TOY_MODEL = "toy_vit"
TEST_IMAGES = 16


@dataclasses.dataclass
class CalibrationRun:
    """One measured ``calibrate()``: its step count (None: no step options), seconds, memory, agreement."""

    steps: int | None
    seconds: float
    peak_rss_gib: float
    rss_rise_gib: float
    agreement_percent: float


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so the resident
    memory before a run is what is alive, not what an earlier run left in the allocator."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_gib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def measure(model: torch.nn.Module, calibrator: str, options: Any, bits: str, images: torch.Tensor,
            test: torch.Tensor, steps: int | None = None) -> CalibrationRun:
    """One calibration on a fresh quantized copy of ``model``: seconds, peak RSS, agreement with FP."""
    spec = parse_bits(bits)
    qmodel = quantize_model(model, spec, QuantConfig())
    context = CalibrationContext(fp_model=model, calibration=CalibrationSet(images), bits=spec, seed=0,
                                 device=torch.device("cpu"))
    instance = CALIBRATORS.get(calibrator)(options)
    release_freed_memory()
    before = rss_gib()
    with PeakMemory() as memory:
        start = time.perf_counter()
        instance.calibrate(qmodel, context)
        seconds = time.perf_counter() - start
    with torch.no_grad():
        agreement = (qmodel(test).argmax(1) == model(test).argmax(1)).float().mean().item() * 100
    peak = memory.peak_rss_mb / 2**10
    return CalibrationRun(steps, seconds, peak, peak - before, agreement)


def step_targets(calibrator: str, options: Any) -> dict[str, int]:
    """The calibrator's step options and their configured counts (empty: nothing to extrapolate)."""
    return {name: getattr(options, name) for name in STEP_OPTIONS.get(calibrator, ())}


def check_extrapolable(calibrator: str, options: Any, steps: int) -> None:
    """One line, before anything runs, when the step options are too large to run and unequal: the line
    through 1 and K steps moves them together, so it would be the cost of neither configuration."""
    targets = step_targets(calibrator, options)
    if max(targets.values(), default=0) > steps and len({count for count in targets.values() if count}) > 1:
        raise HarnessError(f"{calibrator}: extrapolation needs its nonzero step options equal, got {targets}; "
                           f"set them equal with --calib-opt, or each at most --steps {steps}")


def cost_row(model: torch.nn.Module, calibrator: str, options: Any, bits: str, images: torch.Tensor,
             test: torch.Tensor, steps: int) -> dict[str, Any]:
    """The calibrator's figures: measured at its options, or at 1 and ``steps`` steps with the estimate at
    its configured step counts when those exceed ``steps``."""
    targets = step_targets(calibrator, options)
    target = max(targets.values(), default=0)
    row: dict[str, Any] = {"calibrator": calibrator, "options": options_dict(options)}
    if target <= steps:
        row["measured"] = dataclasses.asdict(measure(model, calibrator, options, bits, images, test))
        return row
    runs = []
    for count in (1, steps):
        reduced = dataclasses.replace(options, **{name: count for name, value in targets.items() if value})
        runs.append(measure(model, calibrator, reduced, bits, images, test, steps=count))
    low, high = runs
    per_step = (high.seconds - low.seconds) / (steps - 1)
    row["measured"] = dataclasses.asdict(high)
    row["measured_at_1_step"] = dataclasses.asdict(low)
    row["estimate"] = {"seconds": low.seconds + per_step * (target - 1), "seconds_per_step": per_step,
                       "at_steps": targets, "from_steps": [1, steps]}
    return row


def toy_vit() -> torch.nn.Module:
    """A 2-block, 32-dim ViT at 32 px: rehearses every calibrator in seconds."""
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)


def format_row(row: dict[str, Any], reference: float) -> str:
    measured = row["measured"]
    steps = f" ({measured['steps']} steps)" if measured["steps"] is not None else ""
    line = (f"  {row['calibrator']:8s} {measured['seconds']:9.2f} s{steps:12s} {measured['seconds'] / reference:8.1f}x"
            f"   peak RSS {measured['peak_rss_gib']:6.2f} GiB (+{measured['rss_rise_gib']:.2f})"
            f"   argmax = FP on {measured['agreement_percent']:3.0f} %")
    if "estimate" in row:
        estimate = row["estimate"]
        counts = ", ".join(f"{name}={count}" for name, count in estimate["at_steps"].items())
        low, high = estimate["from_steps"]
        line += (f"\n  {'':8s} {estimate['seconds']:9.1f} s at {counts}, {estimate['seconds'] / reference:.0f}x:"
                 f" ESTIMATED from {low} and {high} steps ({estimate['seconds_per_step']:.4f} s per step)")
        if estimate["seconds_per_step"] <= 0:
            line += " -- per-step time lost in the noise: raise --steps"
    return line


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224", help=f"a timm name, or {TOY_MODEL!r}")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--bits", default="w4a4")
    parser.add_argument("--calib", default="minmax,repq,ptq4vit")
    parser.add_argument("--calib-opt", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="calibrator option; repeatable")
    parser.add_argument("--steps", type=int, default=10,
                        help="step count of the second reduced run when a step option is larger (>= 2)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    calibrators = [name for name in args.calib.split(",") if name]
    calibrators = ["minmax"] + [name for name in calibrators if name != "minmax"]
    overrides = parse_assignments(args.calib_opt, "calibrator")
    options = {name: build_options(CALIBRATORS.get(name).Options, overrides, name, f"calibrator {name!r}")
               for name in calibrators}  # every name and option checked before anything runs
    for name in calibrators:
        check_extrapolable(name, options[name], args.steps)
    torch.set_num_threads(args.threads)
    set_progress(False)
    torch.manual_seed(0)
    if args.model == TOY_MODEL:
        model, size = toy_vit().eval(), 32
    else:
        model = timm.create_model(args.model, pretrained=False).eval()
        size = model.pretrained_cfg["input_size"][-1]
    images = smooth_images(args.images + TEST_IMAGES, size, torch.Generator().manual_seed(0))
    calibration, test = images[:args.images], images[args.images:]
    measure(model, "minmax", options["minmax"], args.bits, calibration, test)  # compiles the fused kernels
    print(f"{args.model}, {args.images} calibration images at {size} px, {args.bits}, {args.threads} threads;"
          f" seconds measured, x min-max, peak RSS (+ rise during the run), top-1 agreement with FP"
          f" on {TEST_IMAGES} images", flush=True)
    rows, reference = [], None
    for name in calibrators:
        row = cost_row(model, name, options[name], args.bits, calibration, test, args.steps)
        reference = reference or row["measured"]["seconds"]
        row["measured"]["ratio_to_minmax"] = row["measured"]["seconds"] / reference
        if "estimate" in row:
            row["estimate"]["ratio_to_minmax"] = row["estimate"]["seconds"] / reference
        rows.append(row)
        print(format_row(row, reference), flush=True)
    figures = {"model": args.model, "images": args.images, "image_size": size, "bits": args.bits,
               "threads": args.threads, "steps": args.steps, "torch": torch.__version__, "timm": timm.__version__,
               "reference": "minmax", "calibrators": rows}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    try:
        main()
    except HarnessError as error:  # a bad name or option: one line, as the CLI says it
        sys.exit(f"error: {error}")
