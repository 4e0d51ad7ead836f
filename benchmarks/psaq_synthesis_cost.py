"""Cost of one PSAQ-ViT synthesis iteration relative to a plain forward+backward (issue #3).

    python benchmarks/psaq_synthesis_cost.py [--model deit_tiny_patch16_224] [--batch 32] [--threads N]

Both on the same random-init timm model and batch (224 px): the plain step is cross-entropy,
forward and backward w.r.t. the input pixels; the synthesis iteration is the generator's own loop
(roll/flip, probes, L_PSE + L_OH + L_TV, backward, Adam, clamp), timed as the difference between
two runs of different length so set-up costs cancel, after a warm-up run that compiles the fused
KDE kernels (``DFQ_HARNESS_FUSED=0`` measures the eager ones). Target: ratio <= 1.15. Also printed:
L_PSE alone (forward + backward on one batch's attn·v outputs), the part the fused kernels speed up.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.method import GenerationContext  # noqa: E402
from harness.task import ImagePrior  # noqa: E402
from harness.priors.patch_similarity import attn_v_probes, patch_similarity_loss  # noqa: E402
from methods.psaq.generator import PatchSimilarityGenerator, PSAQOptions  # noqa: E402


def plain_step_seconds(model: torch.nn.Module, batch: int, repeats: int) -> float:
    images = torch.randn(batch, 3, 224, 224, requires_grad=True)
    labels = torch.randint(1000, (batch,))
    times = []
    for _ in range(repeats + 1):  # the first is warm-up
        start = time.perf_counter()
        F.cross_entropy(model(images), labels).backward()
        times.append(time.perf_counter() - start)
        images.grad = None
    return statistics.median(times[1:])


def pse_seconds(model: torch.nn.Module, batch: int, repeats: int) -> float:
    """L_PSE alone, forward and backward, on the attn·v outputs of one forward of random images."""
    with torch.no_grad(), attn_v_probes(model) as probes:
        model(torch.randn(batch, 3, 224, 224))
        outputs = [probe.value.clone().requires_grad_(True) for probe in probes]
    times = []
    for _ in range(repeats + 1):  # the first is warm-up (and compiles the fused kernels)
        start = time.perf_counter()
        patch_similarity_loss(outputs, batch).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def synthesis_seconds(model: torch.nn.Module, batch: int, iterations: int) -> float:
    generator = PatchSimilarityGenerator(PSAQOptions(num_images=batch, batch_size=batch, iterations=iterations,
                                                     warmup=0, roll_ranges=(15,)))
    prior = ImagePrior(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                       num_classes=1000)
    start = time.perf_counter()
    generator.generate(GenerationContext(task=None, model_name="bench", model=model, prior=prior, seed=0,
                                         device=torch.device("cpu")))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--short", type=int, default=2, help="iterations of the short synthesis run")
    parser.add_argument("--long", type=int, default=7, help="iterations of the long synthesis run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    plain = plain_step_seconds(model, args.batch, repeats=5)
    pse = pse_seconds(model, args.batch, repeats=5)
    synthesis_seconds(model, args.batch, 1)  # warm-up: compiles the fused KDE kernels (harness.fused)
    short, long = (synthesis_seconds(model, args.batch, n) for n in (args.short, args.long))
    iteration = (long - short) / (args.long - args.short)
    print(f"{args.model}, batch {args.batch}, 224 px, {args.threads} threads")
    print(f"plain forward+backward (CE): {plain:.3f} s (median of 5)")
    print(f"L_PSE alone, forward+backward over all blocks: {pse:.3f} s (median of 5)")
    print(f"synthesis iteration: {iteration:.3f} s ((run of {args.long} - run of {args.short}) / {args.long - args.short})")
    print(f"ratio: {iteration / plain:.2f} (target <= 1.15)")


if __name__ == "__main__":
    main()
