"""Calibration time of each calibrator on one random-init timm model, and its ratio to min-max's.

    PYTHONPATH=. python benchmarks/calibration_cost.py --model deit_small_patch16_224 --images 32 \\
        --bits w4a4 --calib minmax,repq,ptq4vit [--threads N]

The same calibration images (smooth random fields at the model's input size) and the same FP
weights for every calibrator; each calibrator runs with its defaults (the authors' settings,
docs/methods.md) on a fresh ``standard``-profile quantized copy, once, after one untimed min-max
run that compiles the fused kernels. Printed per calibrator: wall-clock seconds of
``calibrate()``, the ratio to min-max's, peak resident memory of the process so far, and the top-1
agreement of the calibrated model's logits with the FP model's on 16 other images (random init:
a sanity figure, not accuracy). Calibration time grows about linearly with ``--images``.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import timm
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.plugin.method import CalibrationContext, CalibrationSet  # noqa: E402
from harness.plugin.registry import CALIBRATORS  # noqa: E402
from harness.quant.bits import parse_bits  # noqa: E402
from harness.quant.convert import QuantConfig, quantize_model  # noqa: E402
from harness.run.progress import set_progress  # noqa: E402
from parity_kit import smooth_images  # noqa: E402


def calibration_seconds(model: torch.nn.Module, calibrator: str, bits: str, images: torch.Tensor,
                        test: torch.Tensor) -> tuple[float, float]:
    """(seconds of one calibration, % of test images whose quantized argmax is the FP model's)."""
    spec = parse_bits(bits)
    qmodel = quantize_model(model, spec, QuantConfig())
    context = CalibrationContext(fp_model=model, calibration=CalibrationSet(images), bits=spec, seed=0,
                                 device=torch.device("cpu"))
    start = time.perf_counter()
    CALIBRATORS.get(calibrator)().calibrate(qmodel, context)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        agreement = (qmodel(test).argmax(1) == model(test).argmax(1)).float().mean().item() * 100
    return seconds, agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--bits", default="w4a4")
    parser.add_argument("--calib", default="minmax,repq,ptq4vit")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_progress(False)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    size = model.pretrained_cfg["input_size"][-1]
    images = smooth_images(args.images + 16, size, torch.Generator().manual_seed(0))
    calibration, test = images[:args.images], images[args.images:]
    calibration_seconds(model, "minmax", args.bits, calibration, test)  # compiles the fused kernels
    print(f"{args.model}, {args.images} calibration images at {size} px, {args.bits}, {args.threads} threads")
    reference = None
    for calibrator in args.calib.split(","):
        seconds, agreement = calibration_seconds(model, calibrator, args.bits, calibration, test)
        reference = reference or (seconds if calibrator == "minmax" else None)
        ratio = f"{seconds / reference:8.1f}x min-max" if reference else ""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"  {calibrator:10s} {seconds:9.2f} s {ratio}   peak RSS {peak:5.1f} GiB   "
              f"argmax agrees with FP on {agreement:.0f} % of 16 images", flush=True)


if __name__ == "__main__":
    main()
