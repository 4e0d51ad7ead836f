"""Cost of one PSAQ-ViT synthesis iteration relative to a plain forward+backward (docs/methods.md, PSAQ-ViT).

    python benchmarks/psaq_synthesis_cost.py [--model deit_tiny_patch16_224] [--batch 32] [--threads N] [--pairs 8]

Both on the same random-init timm model and batch (224 px): the plain step is cross-entropy,
forward and backward w.r.t. the input pixels; the synthesis iteration is the generator's own loop
(roll/flip, probes, L_PSE + L_OH + L_TV, backward, Adam, clamp), timed from one model forward to the
next, so set-up costs stay out. This machine's speed drifts by tens of percent within minutes, so
plain steps and short synthesis runs alternate and every pair gives its own ratio; the median is
reported, after a warm-up run that compiles the fused kernels (``DFQ_HARNESS_FUSED=0`` measures
the eager ones). Target: ratio <= 1.15. Also printed: L_PSE alone (forward + backward on one
batch's attn·v outputs).
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

from harness.plugin.method import GenerationContext  # noqa: E402
from harness.plugin.task import ImagePrior  # noqa: E402
from harness.priors.patch_similarity import attn_v_probes, patch_similarity_loss  # noqa: E402
from methods.psaq.generator import PatchSimilarityGenerator, PSAQOptions  # noqa: E402


def plain_step_seconds(model: torch.nn.Module, batch: int, repeats: int) -> float:
    images = torch.randn(batch, 3, 224, 224, requires_grad=True)
    labels = torch.randint(1000, (batch,))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        F.cross_entropy(model(images), labels).backward()
        times.append(time.perf_counter() - start)
        images.grad = None
    return statistics.median(times)


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


def synthesis_iteration_seconds(model: torch.nn.Module, batch: int, iterations: int) -> float:
    """Median time from one synthesis forward to the next over a run of ``iterations`` iterations."""
    generator = PatchSimilarityGenerator(PSAQOptions(num_images=batch, batch_size=batch, iterations=iterations,
                                                     warmup=0, roll_ranges=(15,)))
    prior = ImagePrior(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                       num_classes=1000)
    starts: list[float] = []
    hook = model.register_forward_pre_hook(lambda module, inputs: starts.append(time.perf_counter()))
    try:
        generator.generate(GenerationContext(task=None, model_name="bench", model=model, prior=prior, seed=0,
                                             device=torch.device("cpu")))
    finally:
        hook.remove()
    return statistics.median(later - earlier for earlier, later in zip(starts, starts[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--pairs", type=int, default=8, help="alternations of plain steps and synthesis runs")
    parser.add_argument("--iterations", type=int, default=4, help="synthesis iterations per run (>= 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    print(f"{args.model}, batch {args.batch}, 224 px, {args.threads} threads")
    pse = pse_seconds(model, args.batch, repeats=5)
    print(f"L_PSE alone, forward+backward over all blocks: {pse:.3f} s (median of 5)")
    synthesis_iteration_seconds(model, args.batch, 2)  # warm-up: compiles the fused kernels (harness.model.fused)
    plain_step_seconds(model, args.batch, 1)  # warm-up
    pairs = []
    for _ in range(args.pairs):
        pairs.append((plain_step_seconds(model, args.batch, 2),
                      synthesis_iteration_seconds(model, args.batch, args.iterations)))
    ratios = [iteration / plain for plain, iteration in pairs]
    print("pair  plain fwd+bwd (CE)  synthesis iteration  ratio")
    for index, ((plain, iteration), ratio) in enumerate(zip(pairs, ratios), 1):
        print(f"{index:>4}  {plain:>17.3f}s  {iteration:>18.3f}s  {ratio:.2f}")
    print(f"ratio: {statistics.median(ratios):.2f} (median of {args.pairs} pairs, range "
          f"{min(ratios):.2f}-{max(ratios):.2f}; target <= 1.15)")


if __name__ == "__main__":
    main()
