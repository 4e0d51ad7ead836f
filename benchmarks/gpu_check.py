"""GPU checks: CUDA vs CPU agreement, PSAQ-ViT synthesis cost, eval throughput, fused kernels.

    bash benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--iterations N] [--json FILE]

Random-init timm models and seeded random images only (no weights, data or network), so it runs
from a plain checkout. One labelled line per figure:

- agreement: L_PSE and its gradient on the same attn·v tensors, on the device with the fused
  kernels (as synthesis runs it) vs eager torch on CPU (the plain reference); then the logits of
  the FP, W8A8 and W4A8 model (standard profile, min-max ranges, each copy calibrated on its own
  device with the same images) on the same test images, device vs CPU. FP is the floor: quantized
  logits differ more where a value lands near a rounding boundary.
- synthesis: PSAQ-ViT on DeiT-B, 32 images at 224 px, timed over ``--iterations`` (100) after a
  short warm-up run that compiles the fused kernels, extrapolated to the default schedule (rounds x
  iterations of ``PSAQOptions``); the authors report 227 s on an RTX 3090 for it. Peak memory of the
  timed run.
- throughput: DeiT-S eval images/s on random inputs, FP vs fake-quant W8A8 and W4A8.
- fused kernels: the device types the compiled kernels ran on, or why they fell back.

A check that fails prints its reason (traceback on stderr) and the others still run. ``--quick``
(DeiT-T, a few images and iterations) rehearses every path on CPU: ``--device cpu --quick``, where
"device vs CPU" compares CPU with itself (and L_PSE fused with eager).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import timm
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.bits import parse_bits  # noqa: E402
from harness.calibrators import MinMaxCalibrator  # noqa: E402
from harness.fused import ENVIRONMENT_SWITCH, fused_kernel_states  # noqa: E402
from harness.method import CalibrationContext, CalibrationSet, GenerationContext  # noqa: E402
from harness.memory import reused_heap  # noqa: E402
from harness.priors.patch_similarity import attn_v_probes, patch_similarity_loss  # noqa: E402
from harness.progress import set_progress  # noqa: E402
from harness.quant.convert import QuantConfig, quantize_model  # noqa: E402
from harness.quant.modules import in_place_evaluation  # noqa: E402
from harness.records import PeakMemory, harness_commit, library_versions  # noqa: E402
from methods.psaq.generator import PatchSimilarityGenerator, PSAQOptions  # noqa: E402
from tasks.imagenet import ImageNetTask  # noqa: E402

BITS = ("fp", "w8a8", "w4a8")
AUTHORS_FULL_SCHEDULE_S = 227.0  # PSAQ-ViT's authors, RTX 3090, the full schedule
IMAGE_SHAPE = (3, 224, 224)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Models and workload of one run: the GPU figures, or a CPU rehearsal of every path (``--quick``)."""

    agreement_model: str
    pse_images: int  # images whose attn·v outputs feed L_PSE
    calibration_images: int
    test_images: int
    synthesis_model: str
    synthesis_images: int
    warmup_iterations: int  # compile the fused kernels before timing
    timed_iterations: int
    eval_model: str
    eval_batch: int
    eval_batches: int  # timed, after two warm-up batches


FULL = Sizes("deit_small_patch16_224", pse_images=8, calibration_images=32, test_images=64,
             synthesis_model="deit_base_patch16_224", synthesis_images=32, warmup_iterations=5, timed_iterations=100,
             eval_model="deit_small_patch16_224", eval_batch=128, eval_batches=20)
QUICK = Sizes("deit_tiny_patch16_224", pse_images=2, calibration_images=4, test_images=4,
              synthesis_model="deit_tiny_patch16_224", synthesis_images=4, warmup_iterations=2, timed_iterations=3,
              eval_model="deit_tiny_patch16_224", eval_batch=8, eval_batches=2)


class Report:
    """Figures by check: each printed as one labelled line when measured, all kept for ``--json``."""

    def __init__(self) -> None:
        self.checks: dict[str, dict[str, Any]] = {}

    def line(self, check: str, text: str, **figures: Any) -> None:
        print(f"{check:<12} {text}", flush=True)
        self.checks.setdefault(check, {}).update(figures)

    def run(self, check: str, measure: Callable[["Report"], None]) -> None:
        """``measure`` adds its lines; a failure becomes a line with its reason, so later checks still run."""
        try:
            measure(self)
        except Exception as error:  # noqa: BLE001 - every failure is a finding to report
            traceback.print_exc()
            message = str(error).strip().splitlines()
            reason = f"{type(error).__name__}: {message[0][:300]}" if message else type(error).__name__
            self.line(check, f"FAILED {reason}", failed=reason)


def random_model(name: str, device: torch.device) -> nn.Module:
    """A random-init timm model, frozen in eval mode on ``device``, as the runner prepares an FP model."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def seeded_images(count: int, seed: int) -> Tensor:
    """(count, 3, 224, 224) standard-normal images on CPU, the same on every machine for a seed."""
    return torch.randn(count, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def eager_torch() -> Iterator[None]:
    """The fused kernels switched off (:mod:`harness.fused`): the plain reference they must agree with."""
    previous = os.environ.get(ENVIRONMENT_SWITCH)
    os.environ[ENVIRONMENT_SWITCH] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[ENVIRONMENT_SWITCH]
        else:
            os.environ[ENVIRONMENT_SWITCH] = previous


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures depend on: versions, the accelerator, and float32 precision settings (TF32)."""
    info: dict[str, Any] = {**library_versions(), "harness_commit": harness_commit(), "device": str(device),
                            "cpu": f"{platform.machine()}, {os.cpu_count()} cpus, {torch.get_num_threads()} torch threads",
                            "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cuda_matmul_tf32=torch.backends.cuda.matmul.allow_tf32, cudnn_tf32=torch.backends.cudnn.allow_tf32)
    return info


def check_patch_similarity(report: Report, sizes: Sizes, device: torch.device) -> None:
    """L_PSE (all blocks) and its gradient w.r.t. the attn·v outputs: device (fused) vs CPU (eager)."""
    model = random_model(sizes.agreement_model, torch.device("cpu"))
    with torch.no_grad(), attn_v_probes(model) as probes:
        model(seeded_images(sizes.pse_images, seed=1))
        attn_v = [probe.value.clone() for probe in probes]
    with eager_torch():
        reference, reference_grad = loss_and_gradient(attn_v, sizes.pse_images)
    value, grad = loss_and_gradient([outputs.to(device) for outputs in attn_v], sizes.pse_images)
    value_diff = abs(value - reference) / abs(reference)
    grad_rel_l2 = float((grad - reference_grad).norm() / reference_grad.norm())
    grad_max_diff = float((grad - reference_grad).abs().max() / reference_grad.abs().max())
    report.line("agreement", f"L_PSE {device.type} fused vs cpu eager ({sizes.agreement_model}, {sizes.pse_images} images, "
                f"{len(attn_v)} blocks): value {value:.6f} vs {reference:.6f} (rel diff {value_diff:.1e}), gradient "
                f"rel L2 {grad_rel_l2:.1e}, max abs diff / max abs {grad_max_diff:.1e}",
                pse_value=value, pse_value_cpu_eager=reference, pse_value_rel_diff=value_diff,
                pse_grad_rel_l2=grad_rel_l2, pse_grad_max_abs_diff_rel=grad_max_diff)


def loss_and_gradient(attn_v: list[Tensor], batch_size: int) -> tuple[float, Tensor]:
    """L_PSE and its gradient w.r.t. every block's attn·v tensor, flattened into one CPU vector."""
    leaves = [outputs.clone().requires_grad_(True) for outputs in attn_v]
    loss = patch_similarity_loss(leaves, batch_size)
    loss.backward()
    return loss.item(), torch.cat([leaf.grad.flatten().cpu() for leaf in leaves])


def check_quantized_logits(report: Report, sizes: Sizes, device: torch.device) -> None:
    """Logits of the same test images by the FP, W8A8 and W4A8 model: device vs CPU, each calibrated where it runs."""
    model = random_model(sizes.agreement_model, torch.device("cpu"))
    calibration = seeded_images(sizes.calibration_images, seed=2)
    test = seeded_images(sizes.test_images, seed=3)
    for bits in BITS:
        reference = logits(prepared_model(model, bits, calibration, torch.device("cpu")), test)
        other = logits(prepared_model(model, bits, calibration, device), test)
        max_abs = float((other - reference).abs().max())
        rel_l2 = float((other - reference).norm() / reference.norm())
        agree = int((other.argmax(1) == reference.argmax(1)).sum())
        quantizer = "" if bits == "fp" else f", standard profile, minmax on {sizes.calibration_images} images"
        report.line("agreement", f"{bits} logits {device.type} vs cpu ({sizes.agreement_model}{quantizer}, "
                    f"{sizes.test_images} test images): max abs diff {max_abs:.1e} "
                    f"(logit scale {float(reference.abs().max()):.2f}), rel L2 {rel_l2:.1e}, "
                    f"argmax agrees {agree}/{sizes.test_images}",
                    **{f"{bits}_logits_max_abs_diff": max_abs, f"{bits}_logits_rel_l2": rel_l2,
                       f"{bits}_argmax_agreement": agree / sizes.test_images})


def prepared_model(model: nn.Module, bits: str, calibration: Tensor, device: torch.device) -> nn.Module:
    """``model`` on ``device`` (a copy), quantized with the standard profile and min-max calibrated there unless FP."""
    fp_model = copy.deepcopy(model).to(device)
    spec = parse_bits(bits)
    if spec.is_fp:
        return fp_model
    qmodel = quantize_model(fp_model, spec, QuantConfig())
    MinMaxCalibrator().calibrate(qmodel, CalibrationContext(fp_model=fp_model, calibration=CalibrationSet(calibration),
                                                            bits=spec, seed=0, device=device))
    return qmodel


@torch.no_grad()
def logits(model: nn.Module, images: Tensor) -> Tensor:
    device = next(model.parameters()).device
    return model(images.to(device)).float().cpu()


def check_synthesis(report: Report, sizes: Sizes, device: torch.device) -> None:
    """PSAQ-ViT synthesis of one batch, timed after a warm-up run, extrapolated to the default schedule."""
    model = random_model(sizes.synthesis_model, device)
    task = ImageNetTask()
    context = GenerationContext(task=task, model_name=sizes.synthesis_model, model=model,
                                prior=task.prior(sizes.synthesis_model), seed=0, device=device)
    warmup_s = synthesis_seconds(context, sizes.synthesis_images, sizes.warmup_iterations)
    with PeakMemory() as memory:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = synthesis_seconds(context, sizes.synthesis_images, sizes.timed_iterations)
        peak_cuda_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    defaults = PSAQOptions()
    schedule = defaults.iterations * len(defaults.roll_ranges)
    per_iteration = seconds / sizes.timed_iterations
    report.line("synthesis", f"psaq on {sizes.synthesis_model}, {sizes.synthesis_images} images at 224 px: warm-up of "
                f"{sizes.warmup_iterations} iterations (compiles the fused kernels) {warmup_s:.1f} s",
                warmup_iterations=sizes.warmup_iterations, warmup_s=warmup_s)
    report.line("synthesis", f"{sizes.timed_iterations} iterations in {seconds:.2f} s: {per_iteration:.4f} s/iteration",
                timed_iterations=sizes.timed_iterations, timed_s=seconds, s_per_iteration=per_iteration)
    report.line("synthesis", f"full default schedule ({len(defaults.roll_ranges)} rounds x {defaults.iterations} = "
                f"{schedule} iterations), extrapolated: {per_iteration * schedule:.0f} s "
                f"(authors: {AUTHORS_FULL_SCHEDULE_S:.0f} s on an RTX 3090)",
                schedule_iterations=schedule, extrapolated_full_schedule_s=per_iteration * schedule)
    cuda = f"peak GPU memory allocated {peak_cuda_gib:.2f} GiB, " if peak_cuda_gib is not None else ""
    report.line("synthesis", f"{cuda}peak host RSS {memory.peak_rss_mb / 1024:.2f} GiB",
                peak_cuda_gib=peak_cuda_gib, peak_rss_gib=memory.peak_rss_mb / 1024)


def synthesis_seconds(context: GenerationContext, images: int, iterations: int) -> float:
    """Wall-clock seconds of one PSAQ-ViT batch of ``iterations`` iterations (one round), set-up included."""
    generator = PatchSimilarityGenerator(PSAQOptions(num_images=images, batch_size=images, iterations=iterations,
                                                     warmup=0, roll_ranges=(15,)))
    synchronize(context.device)
    start = time.perf_counter()
    generator.generate(context)
    synchronize(context.device)
    return time.perf_counter() - start


def check_throughput(report: Report, sizes: Sizes, device: torch.device) -> None:
    """Eval images/s of the FP model and its fake-quant copies on the same random batch."""
    model = random_model(sizes.eval_model, device)
    calibration = seeded_images(sizes.calibration_images, seed=2)
    batch = seeded_images(sizes.eval_batch, seed=4).to(device)
    rates: dict[str, float] = {}
    for bits in BITS:  # fp first
        rates[bits] = images_per_second(prepared_model(model, bits, calibration, device), batch, sizes.eval_batches)
        report.line("throughput", f"{bits} {sizes.eval_model}, batch {sizes.eval_batch}: {rates[bits]:.0f} images/s "
                    f"({rates[bits] / rates['fp']:.2f}x fp)", **{f"{bits}_images_per_s": rates[bits]})


@torch.no_grad()
def images_per_second(model: nn.Module, batch: Tensor, batches: int) -> float:
    """Forward passes per second as a grid's cell evaluates (heap reused, temporaries quantized in place)."""
    with reused_heap(), in_place_evaluation():
        for _ in range(2):  # warm-up: kernel selection, caches (the quantized weights)
            model(batch)
        synchronize(batch.device)
        start = time.perf_counter()
        for _ in range(batches):
            model(batch)
        synchronize(batch.device)
        return batches * batch.shape[0] / (time.perf_counter() - start)


def check_fused_kernels(report: Report, sizes: Sizes, device: torch.device) -> None:
    """Where :mod:`harness.fused`'s compiled kernels ran during the checks above, or why they fell back."""
    for purpose, state in fused_kernel_states().items():
        if state["failure"]:
            text = f"fell back to eager torch: {state['failure']}"
        elif not state["enabled"]:
            text = f"switched off ({ENVIRONMENT_SWITCH}=0)"
        else:
            text = f"compiled, ran on {', '.join(state['ran_on']) or 'nothing yet'}"
        ok = device.type in state["ran_on"]
        report.line("fused", f"{purpose}: {text}{'' if ok else f' (not on {device.type})'}",
                    **{purpose: {**state, f"ran_on_{device.type}": ok}})


CHECKS = {"agreement": (check_patch_similarity, check_quantized_logits), "synthesis": (check_synthesis,),
          "throughput": (check_throughput,), "fused": (check_fused_kernels,)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="DeiT-T, a few images and iterations: a CPU rehearsal")
    parser.add_argument("--iterations", type=int, help="timed synthesis iterations (default 100; 3 with --quick)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available to this torch build; --device cpu rehearses the checks")
    sizes = QUICK if args.quick else FULL
    if args.iterations:
        sizes = dataclasses.replace(sizes, timed_iterations=args.iterations)
    device = torch.device(args.device)
    set_progress(False)
    report = Report()
    info = environment(device)
    report.line("environment", ", ".join(f"{key} {value}" for key, value in info.items()), **info)
    start = time.perf_counter()
    for check, measures in CHECKS.items():
        for measure in measures:
            report.run(check, lambda report, measure=measure: measure(report, sizes, device))
    seconds = time.perf_counter() - start
    report.line("total", f"{seconds:.0f} s", seconds=seconds)
    if args.json:
        args.json.write_text(json.dumps({"sizes": dataclasses.asdict(sizes), **report.checks}, indent=2) + "\n")


if __name__ == "__main__":
    main()
