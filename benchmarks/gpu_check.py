"""GPU checks: CUDA vs CPU agreement, PSAQ-ViT synthesis cost, eval throughput, fused kernels, CLI cells on the device.

    bash benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--iterations N] [--only CHECK,...]
                                 [--out DIR] [--json FILE] [--wheels DIR]

Random-init timm models, seeded random images, the shipped digits models and a synthetic ImageNet
folder only (no weights, data or network), so it runs from a plain checkout. One labelled line per figure:

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
- methods, calibrators, tuners: ``python -m harness run --device DEVICE`` on ``digits`` (one model, W4A8,
  seed 0), every registered method with its own generator, calibrator and tuner, then every registered
  calibrator on ``real`` images, then every registered tuner after ``minmax`` on ``real`` images, each
  plugin at the conformance kit's fast options (``smoke_options``). Each name is printed
  with ok and its top-1, or FAILED and its record's error with the innermost frame of this repository
  (a tensor left on the wrong device fails its cell there); a cell that ran on another device fails too.
- imagenet: a synthetic ImageNet val folder (``imagenet_throughput.write_synthetic_imagenet``) and a
  random-init DeiT checkpoint through ``run --tasks imagenet`` twice, into two results folders: the
  first run decodes the images into the evaluation cache (``imagenet_eval/*/images.npy``), the second
  must find that entry untouched and the same top-1.

A check that fails prints its reason (traceback on stderr) and the others still run; the exit status
is 1 when anything failed. ``--out`` (default ``results/gpu_check``) receives ``gpu_check.json``
(every figure and per-check result), ``gpu_check.log`` (the console, the CLI runs' output included)
and ``cells/`` (the CLI runs' records, replaced on every run); the synthetic images and the harness
cache live in a temporary folder. ``--quick`` (DeiT-T, a few images and iterations, 32 digits test
images) rehearses every path on CPU: ``--device cpu --quick``, where "device vs CPU" compares CPU
with itself (and L_PSE fused with eager). The harness's dependencies (pyproject.toml) are checked
first: a machine without network installs the missing ones from ``--wheels DIR``
(``pip install --no-index --find-links DIR``); without it, one line names them.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

REPO = Path(__file__).resolve().parents[1]


def dependency_options() -> argparse.ArgumentParser:
    """The options read before anything is imported (the main parser includes them, for ``--help``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--wheels", type=Path, metavar="DIR", help="install missing dependencies from this folder "
                        "of wheels (pip install --no-index --find-links DIR): a machine without network")
    return parser


def required_distributions(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The harness's run-time dependencies as pyproject.toml names them (distribution names, no versions)."""
    with pyproject.open("rb") as file:
        requirements = tomllib.load(file)["project"]["dependencies"]
    return [re.match(r"[A-Za-z0-9._-]+", requirement).group() for requirement in requirements]


def missing_distributions(names: Iterable[str]) -> list[str]:
    """Those of ``names`` not installed. Versions are not compared: a GPU machine brings its own torch build."""
    missing = []
    for name in names:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def ensure_dependencies(wheels: Path | None, required: list[str]) -> None:
    """Install what is missing from ``wheels`` before the checks import it, or exit with one line naming it."""
    missing = missing_distributions(required)
    if not missing:
        return
    if wheels is None:
        sys.exit(f"gpu_check: missing {', '.join(missing)}; install them, or pass --wheels DIR "
                 "(a folder of their wheels, installed with pip install --no-index --find-links DIR)")
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), *missing]
    print(f"gpu_check: installing {', '.join(missing)} from {wheels}", flush=True)
    if subprocess.run(command).returncode != 0:
        sys.exit(f"gpu_check: `{shlex.join(command)}` failed (pip's reason above; an externally managed "
                 "Python takes PIP_BREAK_SYSTEM_PACKAGES=1)")
    importlib.invalidate_caches()
    still = missing_distributions(missing)
    if still:
        sys.exit(f"gpu_check: still missing {', '.join(still)} after installing from {wheels}")


if __name__ == "__main__":  # before the imports below, which need what it installs
    ensure_dependencies(dependency_options().parse_known_args()[0].wheels, required_distributions())

import timm  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

sys.path.insert(0, str(REPO))

from harness.model.fused import ENVIRONMENT_SWITCH, fused_kernel_states  # noqa: E402
from harness.plugin.calibrators import MinMaxCalibrator  # noqa: E402
from harness.plugin.conformance import smoke_options  # noqa: E402
from harness.plugin.method import CalibrationContext, CalibrationSet, GenerationContext  # noqa: E402
from harness.plugin.registry import CALIBRATORS, GENERATORS, METHODS, TUNERS  # noqa: E402
from harness.plugin.tuner import NO_TUNING  # noqa: E402
from harness.priors.patch_similarity import attn_v_probes, patch_similarity_loss  # noqa: E402
from harness.progress import set_progress  # noqa: E402
from harness.quant.bits import parse_bits  # noqa: E402
from harness.quant.convert import QuantConfig, quantize_model  # noqa: E402
from harness.quant.modules import in_place_evaluation  # noqa: E402
from harness.run.memory import reused_heap  # noqa: E402
from harness.run.peak_memory import PeakMemory  # noqa: E402
from harness.store.provenance import harness_commit, library_versions  # noqa: E402
from harness.store.records import ResultStore  # noqa: E402
from imagenet_throughput import write_synthetic_imagenet  # noqa: E402
from methods.psaq.generator import PatchSimilarityGenerator, PSAQOptions  # noqa: E402
from tasks.imagenet import ImageNetTask  # noqa: E402

BITS = ("fp", "w8a8", "w4a8")
AUTHORS_FULL_SCHEDULE_S = 227.0  # PSAQ-ViT's authors, RTX 3090, the full schedule
IMAGE_SHAPE = (3, 224, 224)
DIGITS_MODEL, CELL_BITS = "digits_vit_seed0", "w4a8"
CALIBRATION_DATA = "real"  # the generator every calibrator is crossed with: real images cost no synthesis
IMAGENET_METHOD, IMAGENET_BITS = "noise", "w8a8"  # noise needs no train/ split


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
    digits_limit: int | None  # digits test images of each CLI cell (None: the whole split)
    imagenet_images: int  # synthetic val JPEGs, evaluated by eval_model through the CLI
    imagenet_short_side: tuple[int, int]  # px range of their shorter side


FULL = Sizes("deit_small_patch16_224", pse_images=8, calibration_images=32, test_images=64,
             synthesis_model="deit_base_patch16_224", synthesis_images=32, warmup_iterations=5, timed_iterations=100,
             eval_model="deit_small_patch16_224", eval_batch=128, eval_batches=20,
             digits_limit=None, imagenet_images=500, imagenet_short_side=(300, 500))
QUICK = Sizes("deit_tiny_patch16_224", pse_images=2, calibration_images=4, test_images=4,
              synthesis_model="deit_tiny_patch16_224", synthesis_images=4, warmup_iterations=2, timed_iterations=3,
              eval_model="deit_tiny_patch16_224", eval_batch=4, eval_batches=1,
              digits_limit=32, imagenet_images=8, imagenet_short_side=(40, 80))


class CheckFailed(Exception):
    """A check's finding (not a crash): its line says why, without a traceback."""


class Report:
    """Figures by check: each printed as one labelled line when measured, all kept for ``--json``."""

    def __init__(self) -> None:
        self.checks: dict[str, dict[str, Any]] = {}
        self.failed: list[str] = []  # checks and cells that failed, for the total line and the exit status

    def line(self, check: str, text: str, **figures: Any) -> None:
        print(f"{check:<12} {text}", flush=True)
        self.checks.setdefault(check, {}).update(figures)

    def run(self, check: str, measure: Callable[["Report"], None]) -> None:
        """``measure`` adds its lines; a failure becomes a line with its reason, so later checks still run."""
        try:
            measure(self)
        except CheckFailed as finding:
            self.fail(check, str(finding))
        except Exception as error:  # noqa: BLE001 - every failure is a finding to report
            traceback.print_exc()
            message = str(error).strip().splitlines()
            reason = f"{type(error).__name__}: {message[0][:300]}" if message else type(error).__name__
            self.fail(check, reason)

    def fail(self, check: str, reason: str) -> None:
        self.line(check, f"FAILED {reason}", failed=reason)
        self.failed.append(check)

    def cell(self, check: str, name: str, result: dict[str, Any]) -> None:
        """A method's or calibrator's cell: ``name ok top-1 ...`` or ``name FAILED reason``, kept under its name."""
        self.line(check, f"{name:<14} {describe(result)}", **{name: result})
        if result["status"] != "ok":
            self.failed.append(f"{check} {name}")


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
    """The fused kernels switched off (:mod:`harness.model.fused`): the plain reference they must agree with."""
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
    """Where :mod:`harness.model.fused`'s compiled kernels ran during the checks above, or why they fell back."""
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


@dataclasses.dataclass(frozen=True)
class HarnessCLI:
    """``python -m harness run`` as users call it, in its own process, on the checked device."""

    sizes: Sizes
    device: torch.device
    results: Path  # OUT/cells: one results folder per grid, kept beside the log
    workdir: Path  # the synthetic ImageNet and the harness cache: large, temporary

    @property
    def cache(self) -> Path:
        return self.workdir / "harness_cache"

    def arguments(self, results: Path, grid: list[str]) -> list[str]:
        """The ``harness`` arguments of one grid on this device, its records in ``results``."""
        return ["run", *grid, "--seeds", "0", "--device", self.device.type, "--results", str(results),
                "--no-report", "--no-progress"]

    def run(self, results: Path, grid: list[str]) -> int:
        """One grid; its output goes through this console (so into the log). Its exit status."""
        command = [sys.executable, "-m", "harness", *self.arguments(results, grid)]
        print(f"$ python {shlex.join(command[1:])}", flush=True)
        environment = {**os.environ, "DFQ_HARNESS_CACHE": str(self.cache), "HF_HUB_OFFLINE": "1",
                       "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as process:
            for line in process.stdout:
                print(f"  | {line}", end="", flush=True)
        return process.returncode


def smoke_flags(generators: Iterable[str], calibrators: Iterable[str], tuners: Iterable[str] = ()) -> list[str]:
    """The conformance kit's fast options of these plugins (their ``smoke_options``), as scoped CLI flags."""
    flags = []
    for flag, registry, names in (("--gen-opt", GENERATORS, generators), ("--calib-opt", CALIBRATORS, calibrators),
                                  ("--tune-opt", TUNERS, tuners)):
        for name in sorted(set(names)):
            for key, value in smoke_options(registry.get(name), name).items():
                flags += [flag, f"{name}.{key}={json.dumps(value)}"]
    return flags


Stages = tuple[str, str, "str | None"]  # a cell's generator, calibrator and tuner (None: calibration only)


def records_by_stages(results: Path) -> dict[Stages, dict[str, Any]]:
    """The records of a results folder by (generator, calibrator, tuner): one grid of one model, bits and seed."""
    return {(record["generator"], record["calibrator"], record.get("tuner")): record
            for record in ResultStore(results).records()}


def cell_result(record: dict[str, Any] | None, device: torch.device, exit_status: int) -> dict[str, Any]:
    """A cell's outcome for the report: ok with its top-1 and stage times, or FAILED with its record's reason."""
    if record is None:
        return {"status": "FAILED", "error": f"no record: `harness run` exited with status {exit_status} first"}
    if record["status"] != "ok":
        return {"status": "FAILED", "error": record["error"], "where": innermost_frame(record.get("traceback", ""))}
    kernels = record["kernels"]
    if kernels["device"] != device.type:
        return {"status": "FAILED", "error": f"the cell ran on {kernels['device']}, not {device.type}"}
    return {"status": "ok", "top1": record["metrics"]["top1"], "timing_s": record["timing_s"],
            "device": kernels["device"], "fused": kernels["fused"]}


def innermost_frame(traceback_text: str) -> str | None:
    """The last frame of a traceback in this repository's code (harness, a plugin, a test), not in a library
    (a virtual environment may live in the checkout): where to look first."""
    frames = [(Path(path), line, function)
              for path, line, function in re.findall(r'File "([^"]+)", line (\d+), in (\S+)', traceback_text)]
    ours = [(path, line, function) for path, line, function in frames
            if path.is_relative_to(REPO) and not {"site-packages", "dist-packages"} & set(path.parts)]
    if not ours:
        return None
    path, line, function = ours[-1]
    return f"{path.relative_to(REPO)}:{line} in {function}"


def describe(result: dict[str, Any]) -> str:
    """A :func:`cell_result` as the text after its name: what a reader of the log needs to act on it."""
    if result["status"] != "ok":
        return f"FAILED {result['error']}" + (f" (at {result['where']})" if result.get("where") else "")
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in sorted(result["timing_s"].items()))
    return f"ok      top-1 {result['top1']:6.2f}  ({stages}; on {result['device']}, fused kernels {result['fused']})"


def check_digits_cells(report: Report, cli: HarnessCLI, check: str, cells: dict[str, Stages],
                       selection: list[str]) -> None:
    """One ``run`` of the digits cells ``selection`` makes, then a line per name of ``cells`` from its record."""
    limit = [] if cli.sizes.digits_limit is None else ["--limit", str(cli.sizes.digits_limit)]
    results = cli.results / "digits"  # methods, calibrators and tuners share it: a cell two checks run is computed once
    generators, calibrators, tuners = zip(*cells.values())
    exit_status = cli.run(results, [*selection, "--tasks", "digits", "--models", DIGITS_MODEL, "--bits", CELL_BITS,
                                    *limit, *smoke_flags(generators, calibrators, [t for t in tuners if t])])
    records = records_by_stages(results)
    for name, stages in cells.items():
        report.cell(check, name, cell_result(records.get(stages), cli.device, exit_status))


def check_methods(report: Report, cli: HarnessCLI) -> None:
    """Every registered method, with its own generator, calibrator and tuner."""
    cells = {name: (spec.generator, spec.calibrator, spec.tuner) for name, spec in METHODS.items()}
    check_digits_cells(report, cli, "methods", cells, ["--methods", ",".join(cells)])


def check_calibrators(report: Report, cli: HarnessCLI) -> None:
    """Every registered calibrator on real images, those no method pairs with ``real`` included."""
    cells = {name: (CALIBRATION_DATA, name, None) for name in CALIBRATORS.names()}
    check_digits_cells(report, cli, "calibrators", cells,
                       ["--data", CALIBRATION_DATA, "--calib", ",".join(cells), "--tune", NO_TUNING])


def check_tuners(report: Report, cli: HarnessCLI) -> None:
    """Every registered tuner after min-max calibration on real images (docs/methods.md, Fine-tuning)."""
    cells = {name: (CALIBRATION_DATA, "minmax", name) for name in TUNERS.names()}
    check_digits_cells(report, cli, "tuners", cells,
                       ["--data", CALIBRATION_DATA, "--calib", "minmax", "--tune", ",".join(cells)])


def check_imagenet_cache(report: Report, cli: HarnessCLI) -> None:
    """``run --tasks imagenet`` twice: the second run's evaluations (FP and quantized) read the first's cache entry."""
    sizes, model, method = cli.sizes, cli.sizes.eval_model, METHODS.get(IMAGENET_METHOD)
    root, checkpoint = cli.workdir / "imagenet", cli.workdir / f"{model}.pth"
    mean_kb = write_synthetic_imagenet(root / "val", sizes.imagenet_images, sizes.imagenet_short_side)
    torch.save(random_model(model, torch.device("cpu")).state_dict(), checkpoint)
    report.line("imagenet", f"synthetic val: {sizes.imagenet_images} JPEGs, {mean_kb:.0f} KB on average; "
                f"random-init {model}", images=sizes.imagenet_images, mean_kb=mean_kb, model=model)
    arguments = ["--methods", IMAGENET_METHOD, "--tasks", "imagenet", "--models", model, "--bits", IMAGENET_BITS,
                 "--data-root", str(root), "--checkpoint", str(checkpoint),
                 *smoke_flags([method.generator], [method.calibrator])]
    runs = {}
    for run in ("first", "second"):
        results = cli.results / f"imagenet_{run}"
        exit_status = cli.run(results, arguments)
        result = cell_result(next(iter(records_by_stages(results).values()), None), cli.device, exit_status)
        if result["status"] != "ok":
            raise CheckFailed(f"{run} run: {describe(result)}")
        runs[run] = {**result, "cache_entries": eval_cache_entries(cli.cache)}
        report.line("imagenet", f"{run} run: {describe(result)}, {len(runs[run]['cache_entries'])} evaluation "
                    "cache entry", **{f"{run}_run": runs[run]})
    first, second = runs["first"], runs["second"]
    hit = len(first["cache_entries"]) == 1 and second["cache_entries"] == first["cache_entries"]
    report.line("imagenet", f"second run served from the evaluation cache: {'yes' if hit else 'no'} (entry "
                f"{'untouched' if hit else 'rebuilt or missing'}), top-1 {second['top1']:.2f} vs {first['top1']:.2f}",
                second_run_cache_hit=hit)
    if not hit or second["top1"] != first["top1"]:
        raise CheckFailed("the second run did not evaluate the same images from the first run's cache entry")


def eval_cache_entries(cache: Path) -> dict[str, list[int]]:
    """Each decoded-images file of the imagenet evaluation cache with its inode and mtime: a rebuild changes them."""
    return {str(path.relative_to(cache)): [(stat := path.stat()).st_ino, stat.st_mtime_ns]
            for path in sorted(cache.glob("imagenet_eval/*/images.npy"))}


MEASUREMENTS = {"agreement": (check_patch_similarity, check_quantized_logits), "synthesis": (check_synthesis,),
                "throughput": (check_throughput,), "fused": (check_fused_kernels,)}  # in this process
CLI_CHECKS = {"methods": check_methods, "calibrators": check_calibrators, "tuners": check_tuners,
              "imagenet": check_imagenet_cache}


class Tee:
    """A text stream writing to the console and the log file, so the log holds the whole run."""

    def __init__(self, console: TextIO, log: TextIO) -> None:
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.console.write(text)
        return self.log.write(text)

    def flush(self) -> None:
        self.console.flush()
        self.log.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding: the console's
        return getattr(self.console, name)


def run_checks(selected: list[str], sizes: Sizes, device: torch.device, cli: HarnessCLI) -> Report:
    """The ``selected`` checks in order, each failure reported and the rest run anyway."""
    report = Report()
    info = environment(device)
    report.line("environment", ", ".join(f"{key} {value}" for key, value in info.items()), **info)
    start = time.perf_counter()
    for check, measures in MEASUREMENTS.items():
        for measure in measures if check in selected else ():
            report.run(check, lambda report, measure=measure: measure(report, sizes, device))
    for check, measure in CLI_CHECKS.items():
        if check in selected:
            report.run(check, lambda report, measure=measure: measure(report, cli))
    seconds = time.perf_counter() - start
    verdict = f"FAILED: {', '.join(report.failed)}" if report.failed else "every check passed"
    report.line("total", f"{seconds:.0f} s; {verdict}", seconds=seconds, failures=report.failed)
    return report


def main(argv: list[str] | None = None) -> int:
    checks = [*MEASUREMENTS, *CLI_CHECKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[dependency_options()])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="DeiT-T, a few images and iterations: a CPU rehearsal")
    parser.add_argument("--iterations", type=int, help="timed synthesis iterations (default 100; 3 with --quick)")
    parser.add_argument("--only", type=lambda text: text.split(","), default=checks, metavar="CHECK,...",
                        help=f"comma-separated checks to run (default all: {','.join(checks)})")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gpu_check", metavar="DIR",
                        help="gpu_check.json, gpu_check.log and the CLI runs' records (cells/, replaced) go here")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="the figures and per-check results (default OUT/gpu_check.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available to this torch build; --device cpu rehearses the checks")
    if set(args.only) - set(checks):
        parser.error(f"unknown check(s) {', '.join(sorted(set(args.only) - set(checks)))}; known: {', '.join(checks)}")
    sizes = QUICK if args.quick else FULL
    if args.iterations:
        sizes = dataclasses.replace(sizes, timed_iterations=args.iterations)
    device = torch.device(args.device)
    set_progress(False)
    out = args.out.resolve()  # the CLI runs in the repository, not here
    shutil.rmtree(out / "cells", ignore_errors=True)  # a rerun computes every cell again
    out.mkdir(parents=True, exist_ok=True)
    with (out / "gpu_check.log").open("w") as log, contextlib.redirect_stdout(Tee(sys.stdout, log)), \
            contextlib.redirect_stderr(Tee(sys.stderr, log)), tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        report = run_checks(args.only, sizes, device, HarnessCLI(sizes, device, out / "cells", Path(work)))
    figures = {"sizes": dataclasses.asdict(sizes), "checks_run": args.only, **report.checks}
    (args.json or out / "gpu_check.json").write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
