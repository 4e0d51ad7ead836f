"""What fine-tuning costs at full size: seconds per ``lsq_kd`` step on a random-init timm model, extrapolated to
MaskAQ's schedule (docs/methods.md, Fine-tuning; docs/miniature.md, Fine-tuning).

    python benchmarks/tuning_cost.py [--model deit_small_patch16_224] [--bits w4a4] [--steps 5] [--device cpu]

A step is what ``lsq_kd`` does per batch: the FP teacher's forward, the quantized student's forward and backward
(LSQ step sizes and the quantized layers' weights), one SGD step. The model is min-max calibrated on random
images first (calibration is not timed). Printed: seconds per step (median of ``--steps`` after one warm-up),
and the time of MaskAQ's fine-tuning schedule at that rate: 10 000 images, batch 16, 198 stepping epochs of 200
(123 750 steps), and of the default ``lsq_kd`` schedule on a 32-image calibration set (2 batches x 198 epochs).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.plugin.method import CalibrationSet  # noqa: E402
from harness.plugin.tuner import TuningContext  # noqa: E402
from harness.quant.bits import parse_bits  # noqa: E402
from harness.quant.calibrate import observe_and_freeze  # noqa: E402
from harness.quant.convert import QuantConfig, quantize_model  # noqa: E402
from harness.quant.observers import MinMaxObserver  # noqa: E402
from methods.lsq_kd import LsqKdOptions, LsqKdTuner  # noqa: E402

MASKAQ_STEPS = (10_000 // 16) * 198  # images / batch x stepping epochs (200 less 2 warm-up)
DEFAULT_STEPS = 2 * 198  # 32 images in batches of 16 x stepping epochs


def seconds_per_step(model_name: str, bits: str, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    teacher = timm.create_model(model_name, pretrained=False).to(device).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    images = torch.randn(16, 3, 224, 224, device=device)
    times = []
    for _ in range(steps + 1):  # one step per tuner run, each on a freshly calibrated copy; the first warms up
        student = quantize_model(teacher, parse_bits(bits), QuantConfig())
        observe_and_freeze(student, images, lambda _: MinMaxObserver(), device)
        tuner = LsqKdTuner(LsqKdOptions(epochs=1, warmup_epochs=0, batch_size=16))
        context = TuningContext(fp_model=teacher, calibration=CalibrationSet(images), bits=parse_bits(bits), seed=0,
                                device=device)
        info = tuner.tune(student, context)
        times.append(info["seconds"])  # includes two evaluation passes (discrepancy before and after): subtracted below
    evaluation = _evaluation_seconds(teacher, student, images)
    return statistics.median(times[1:]) - 2 * evaluation


def _evaluation_seconds(teacher: torch.nn.Module, student: torch.nn.Module, images: torch.Tensor) -> float:
    """One no-grad forward of teacher and student on the batch: what lsq_kd's discrepancy before/after costs."""
    with torch.no_grad():
        start = time.perf_counter()
        teacher(images), student(images)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--bits", default="w4a4")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    per_step = seconds_per_step(args.model, args.bits, args.steps, torch.device(args.device))
    print(f"{args.model} {args.bits} on {args.device} ({torch.get_num_threads()} threads): {per_step:.2f} s per lsq_kd "
          f"step (batch 16)")
    print(f"MaskAQ's fine-tuning schedule ({MASKAQ_STEPS} steps): {per_step * MASKAQ_STEPS / 3600:.1f} h")
    print(f"lsq_kd's defaults on 32 images ({DEFAULT_STEPS} steps): {per_step * DEFAULT_STEPS / 60:.1f} min")


if __name__ == "__main__":
    main()
