"""Deployed (ONNX Runtime, CPU) versus simulated (fake-quant) results of the `standard` profile (docs/deploy.md).

Three measurements, each printed with its figures:

1. digits: both shipped models at W8A8 and W4A8, the `real` method (real images, min-max), calibrated
   by the grid runner in a temporary results folder; top-1 through the task's own evaluation, on the
   fake-quant model and on its ONNX export in ONNX Runtime (target: within 0.2 points).
2. DeiT-T and DeiT-S, random init, W8A8 and W4A8, min-max on 32 smooth random images: logits on 32
   more, ONNX Runtime against fake-quant (max abs difference, relative L2, argmax agreement), with
   ONNX Runtime's integer kernels and with its graph optimizations off (the reference Q/DQ
   operators, float products), which separates quantize rounding from integer accumulation; 8-bit
   weights in both stored forms, u8 (exact on every CPU) and s8 (the u8 x s8 kernel, whose pair sums
   saturate on CPUs without VNNI): docs/deploy.md, Same integers on every CPU.
3. DeiT-S W8A8 latency: the Q/DQ export (u8 and s8 weights) against the FP32 model exported the
   same way, both in ONNX Runtime with every available core, batch 1 and batch 32, after 3 warm-up
   runs, median of ``--repeats`` runs (target: speed-up >= 1.5 at batch 32); and file sizes (target <= 0.3).

Also printed: the CPU class and model, and which integer kernels ONNX Runtime's graph optimizer
fused the Q/DQ pairs into.
"""
from __future__ import annotations

import argparse
import collections
import os
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
import timm
import torch

from harness.deploy.export import EXECUTION_PROVIDER, OnnxRuntimeModel, export_onnx, median_seconds, stored_weight_type
from harness.plugin.calibrators import MinMaxCalibrator
from harness.plugin.method import CalibrationContext, CalibrationSet
from harness.progress import set_progress
from harness.quant.bits import parse_bits
from harness.quant.convert import QuantConfig, quantize_model
from harness.run.grid import GridSpec, expand
from harness.run.worker import CellWorker
from harness.store.machine import cpu_class, cpu_description
from parity_kit import smooth_images  # noqa: E402

BITS = ("w8a8", "w4a8")
FORMS_AT_8_BITS = ("u8", "s8")  # the stored weight types compared where they differ (8-bit weights)


def digits(folder: Path, threads: int) -> None:
    worker = CellWorker(folder)
    for cell in expand(GridSpec(methods=("real",), tasks=("digits",), bits=BITS, seeds=(0,))):
        qmodel, task = worker.calibrated_model(cell)
        simulated = task.evaluate(qmodel, cell.model)["top1"]
        path = export_onnx(qmodel, torch.zeros(2, *task.prior(cell.model).input_size), folder / f"{cell.model}-{cell.bits}.onnx")
        deployed = task.evaluate(OnnxRuntimeModel(path, threads), cell.model)["top1"]
        print(f"digits {cell.model} {cell.bits}: top-1 fake-quant {simulated:.2f} %, ONNX Runtime {deployed:.2f} %, "
              f"difference {deployed - simulated:+.2f} points (target within 0.2)", flush=True)


def calibrated(model: torch.nn.Module, bits: str, images: torch.Tensor) -> torch.nn.Module:
    qmodel = quantize_model(model, parse_bits(bits), QuantConfig())
    MinMaxCalibrator().calibrate(qmodel, CalibrationContext(fp_model=model, calibration=CalibrationSet(images),
                                                            bits=parse_bits(bits), seed=0, device=torch.device("cpu")))
    return qmodel


def weight_types(bits: str) -> tuple[str, ...]:
    """Both stored forms for 8-bit weights; below 8 bits the two compute the same integers, so the default."""
    weight_bits = parse_bits(bits).weight_bits
    return FORMS_AT_8_BITS if weight_bits == 8 else (stored_weight_type(weight_bits),)


def fused_kernels(path: Path, folder: Path) -> dict[str, int]:
    """The operators of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=[EXECUTION_PROVIDER])
    counts = collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    return {op: n for op, n in sorted(counts.items()) if "Integer" in op or op.startswith(("QLinear", "Quantize",
                                                                                          "Dequantize", "MatMul"))}


def logits(name: str, folder: Path, threads: int) -> None:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    calibration, evaluation = smooth_images(32, 224, generator), smooth_images(32, 224, generator)
    for bits in BITS:
        qmodel = calibrated(model, bits, calibration)
        with torch.no_grad():
            expected = qmodel(evaluation)
        for weight_type in weight_types(bits):
            path = export_onnx(qmodel, evaluation[:2], folder / f"{name}-{bits}-{weight_type}.onnx", weight_type)
            for optimize, how in ((True, "integer kernels"), (False, "reference Q/DQ operators, float products")):
                actual = OnnxRuntimeModel(path, threads, optimize=optimize)(evaluation)
                difference = (actual - expected).abs().max().item()
                relative = ((actual - expected).norm() / expected.norm()).item()
                agree = (actual.argmax(1) == expected.argmax(1)).sum().item()
                print(f"{name} {bits} {weight_type} weights: ONNX Runtime ({how}) vs fake-quant logits: max abs "
                      f"difference {difference:.3g} (logits up to {expected.abs().max().item():.3g}), relative L2 "
                      f"{relative:.3g}, argmax agreement {agree}/{len(expected)}", flush=True)
            if bits == "w8a8":
                print(f"  kernels run by ONNX Runtime: {fused_kernels(path, folder)}", flush=True)


def median_latency(path: Path, images: torch.Tensor, threads: int, repeats: int) -> float:
    return median_seconds(OnnxRuntimeModel(path, threads), images, repeats, warmup=3)


def latency(folder: Path, threads: int, repeats: int) -> None:
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    images = smooth_images(32, 224, generator)
    fp_path = export_onnx(model, images[:2], folder / "deit_small-fp32.onnx")
    qmodel = calibrated(model, "w8a8", images)
    for weight_type in FORMS_AT_8_BITS:
        q_path = export_onnx(qmodel, images[:2], folder / f"deit_small-w8a8-{weight_type}.onnx", weight_type)
        size = q_path.stat().st_size / fp_path.stat().st_size
        print(f"deit_small W8A8 {weight_type} weights: file {q_path.stat().st_size / 2**20:.1f} MiB vs FP32 "
              f"{fp_path.stat().st_size / 2**20:.1f} MiB, ratio {size:.3f} (target <= 0.3)", flush=True)
        for batch in (1, 32):
            fp, quant = (median_latency(path, images[:batch], threads, repeats) for path in (fp_path, q_path))
            print(f"deit_small W8A8 {weight_type} weights batch {batch}: ONNX Runtime {threads} thread(s), median of "
                  f"{repeats} warm runs: FP32 {fp * 1e3:.1f} ms, W8A8 {quant * 1e3:.1f} ms per batch, speed-up "
                  f"{fp / quant:.2f}x" + (" (target >= 1.5)" if batch == 32 else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "digits", "logits", "latency"), default="all")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_progress(False)
    cpu = cpu_description()
    print(f"onnxruntime {ort.__version__} {EXECUTION_PROVIDER}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{cpu_class(cpu)}: {cpu['model']}, extensions {' '.join(cpu['extensions']) or 'none listed'}")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if args.part in ("all", "digits"):
            digits(folder, args.threads)
        if args.part in ("all", "logits"):
            for name in ("deit_tiny_patch16_224", "deit_small_patch16_224"):
                logits(name, folder, args.threads)
        if args.part in ("all", "latency"):
            latency(folder, args.threads, args.repeats)


if __name__ == "__main__":
    main()
