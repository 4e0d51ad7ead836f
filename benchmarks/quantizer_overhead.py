"""(a) Evaluation time of a calibrated W8A8 fake-quant DeiT-T over the FP model's (target <= 1.3).

Random init (no weights needed), batch 32 at 224 px, CPU, timm's default (fused) attention for FP.
"""
from __future__ import annotations

import os
import time

import timm
import torch

from harness.bits import parse_bits
from harness.calibrators import MinMaxCalibrator
from harness.method import CalibrationContext, CalibrationSet
from harness.quant.convert import QuantConfig, quantize_model


def best_time(model: torch.nn.Module, images: torch.Tensor, repeats: int = 5) -> float:
    with torch.no_grad():
        model(images)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    images = torch.randn(32, 3, 224, 224)
    bits = parse_bits("w8a8")
    for profile in ("standard", "psaq"):
        qmodel = quantize_model(model, bits, QuantConfig(profile=profile))
        MinMaxCalibrator().calibrate(qmodel, CalibrationContext(
            fp_model=model, calibration=CalibrationSet(images), bits=bits, seed=0, device=torch.device("cpu")))
        fp, quant = best_time(model, images), best_time(qmodel, images)
        print(f"deit_tiny W8A8 {profile:8s}: FP {fp:.3f} s, fake-quant {quant:.3f} s per batch of 32, "
              f"ratio {quant / fp:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
