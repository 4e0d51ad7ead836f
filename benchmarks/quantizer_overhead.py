"""Evaluation time of calibrated fake-quant models over the FP model's (target <= 1.1 for DeiT-S).

Random init (no weights needed), batch 32 at 224 px, CPU, timm's default (fused) attention for FP.
Run from a checkout with ``PYTHONPATH=.`` so the checkout's harness is measured.
The FP and quantized forwards take turns, round after round, so they share the machine's
conditions; best times (wall-clock and process CPU time, the latter less sensitive to other
processes on a shared machine) and the median ratio to the FP forward just before are printed.
``--eager`` adds the quantizer without fused kernels (``DFQ_HARNESS_FUSED=0``) in the same run.
The runs evaluate as a grid's cells do: freed heap memory reused (``harness.run.memory.reused_heap``)
and declared temporaries quantized in place (``harness.quant.modules.in_place_evaluation``);
``--plain`` measures without either (glibc's default heap, every quantizer writing a new tensor).

    python benchmarks/quantizer_overhead.py --model deit_small_patch16_224 --bits w8a8,w4a8 --eager
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import time
from typing import Callable

import timm
import torch

from harness.model.fused import ENVIRONMENT_SWITCH
from harness.plugin.calibrators import MinMaxCalibrator
from harness.plugin.method import CalibrationContext, CalibrationSet
from harness.quant.bits import parse_bits
from harness.quant.convert import QuantConfig, quantize_model
from harness.quant.modules import in_place_evaluation
from harness.run.memory import heap_reuse_available, reused_heap


def calibrated(model: torch.nn.Module, bits: str, profile: str, images: torch.Tensor) -> torch.nn.Module:
    """A min-max calibrated fake-quant copy of ``model``."""
    spec = parse_bits(bits)
    qmodel = quantize_model(model, spec, QuantConfig(profile=profile))
    MinMaxCalibrator().calibrate(qmodel, CalibrationContext(
        fp_model=model, calibration=CalibrationSet(images), bits=spec, seed=0, device=torch.device("cpu")))
    return qmodel


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_times(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of every run in every round, the runs taking turns so they share conditions."""
    for run in runs.values():
        run()  # warm-up: weight caches, compiled kernels
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(timed(run))
    return times


def summary(times: dict[str, list[tuple[float, float]]], reference: str = "FP") -> list[str]:
    """Per run: best wall and CPU time over the reference's best, and the median ratio to the reference
    run just before it in the same round (a neighbour's load moves both)."""
    best = {name: [min(t[i] for t in runs) for i in (0, 1)] for name, runs in times.items()}
    lines = []
    for name, runs in times.items():
        paired = [run[0] / before[0] for run, before in zip(runs, times[reference])]
        lines.append(f"  {name:12s} best {best[name][0]:6.2f} s wall, {best[name][1]:6.2f} s cpu; / FP: best wall "
                     f"{best[name][0] / best[reference][0]:.3f}, best cpu {best[name][1] / best[reference][1]:.3f}, "
                     f"median paired wall {statistics.median(paired):.3f}")
    return lines


def with_fusion(enabled: bool, run: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        previous = os.environ.get(ENVIRONMENT_SWITCH, "1")
        os.environ[ENVIRONMENT_SWITCH] = "1" if enabled else "0"  # read at every kernel pick
        try:
            return run()
        finally:
            os.environ[ENVIRONMENT_SWITCH] = previous
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--bits", default="w8a8,w4a8")
    parser.add_argument("--profile", default="standard", choices=("standard", "psaq"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--eager", action="store_true", help="also time the quantizer without fused kernels")
    parser.add_argument("--plain", action="store_true",
                        help="glibc's default heap and no in-place quantization, not the worker's evaluation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    images = torch.randn(args.batch, 3, 224, 224)
    runs = {"FP": lambda: model(images)}
    for bits in args.bits.split(","):
        qmodel = calibrated(model, bits, args.profile, images[:8])
        runs[f"{bits} fused"] = with_fusion(True, lambda qmodel=qmodel: qmodel(images))
        if args.eager:
            runs[f"{bits} eager"] = with_fusion(False, lambda qmodel=qmodel: qmodel(images))
    with torch.no_grad(), contextlib.ExitStack() as conditions:
        if not args.plain:
            conditions.enter_context(reused_heap())
            conditions.enter_context(in_place_evaluation())
        times = interleaved_times(runs, args.rounds)
    reused = not args.plain and heap_reuse_available()
    print(f"{args.model} {args.profile}, batch {args.batch} at 224 px, {args.threads} threads, {args.rounds} rounds, "
          f"{'heap reused' if reused else 'system heap'}, {'plain' if args.plain else 'in-place'} quantizers, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (target: fake-quant / FP <= 1.1)")
    print("\n".join(summary(times)))


if __name__ == "__main__":
    main()
