"""Calibrator ``ranking``: Liu et al., NeurIPS 2021 (docs/methods.md, Ranking-loss PTQ).

Reconciling the paper's symmetric uniform quantizers with one scale per layer with the harness's
quantizer (docs/quantizer.md, Arithmetic: per-channel symmetric weights, per-tensor asymmetric activations):
Δ_W is one multiplier per layer on the per-channel min-max weight scales, and Δ_X one multiplier
per quantizer on its min-max range (so on its step). With the multiplier's grid [0.5, 1.2] this is
the paper's search over [α Δ0, β Δ0], one searched number per operand and layer.

Steps: (mixed precision only) nuclear-norm sensitivities and a bit allocation; min-max ranges for
every quantizer; then, layer by layer on cached FP inputs, the alternating search maximizing
Γ(O, Ô) − γ·L_rank; last, bias correction of every Linear (and the patch embedding) from the mean
output error. In the ``psaq`` profile, quantizers that are not matmul inputs (LayerNorm, residual,
qkv/proj/fc2 outputs, scores, ...) keep their min-max ranges; the record lists them.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
from torch import nn

from harness.api import ATTENTION, CALIBRATORS, CalibrationContext, Calibrator, progress_bar
from harness.api import Range, at_least, ranged
from harness.api.quantizer import MinMaxObserver, act_quantizers, observe_and_freeze, weight_quantized_layers
from methods.ranking.mixed_precision import allocate_bits, average_bits, layer_sensitivity
from methods.ranking.objective import element_pairs
from methods.ranking.search import alternating_search, bias_correction, candidate_grid
from methods.ranking.units import capture, matmul_sites


@dataclass
class RankingOptions:
    """The paper's defaults where it gives them; θ, γ are unpublished (docs/methods.md, Ranking-loss PTQ)."""

    search_low: float = ranged(Range(low=0, high=1, low_open=True), 0.5)  # paper: α = 0.5 (grid [α Δ0, β Δ0])
    search_high: float = at_least(1, 1.2)  # paper: β = 1.2
    num_candidates: int = at_least(2, 71)  # grid points, a 0.01 step (unpublished); 1.0 is always one of them
    rounds: int = at_least(1, 3)  # alternating W-then-X rounds, the paper's "a few rounds" (unpublished)
    gamma: float = at_least(0, 1.0)  # weight of the ranking loss (unpublished; our default)
    theta: float = at_least(0, 0.001)  # hinge margin on attention probabilities (unpublished; our default)
    rank_pairs: int = at_least(1, 1024)  # element pairs of each head's attention map compared (a fixed sample; ours)
    bias_correction: bool = True  # paper: subtract the mean output error from the bias
    bit_choices: tuple[int, ...] | None = ranged(Range(low=2, high=16), None)  # mixed precision; None: (b-2, b, b+2), {4, 6, 8} for mp6

    def __post_init__(self) -> None:
        if not 0 < self.search_low <= 1.0 <= self.search_high:
            raise ValueError(f"search grid [{self.search_low}, {self.search_high}] must be > 0 and contain 1.0 (min-max)")
        if self.num_candidates < 2 or self.rounds < 1 or self.rank_pairs < 1:
            raise ValueError("num_candidates >= 2, rounds >= 1 and rank_pairs >= 1 are required")
        if self.gamma < 0 or self.theta < 0:
            raise ValueError(f"gamma and theta must be >= 0, got {self.gamma}, {self.theta}")
        if self.bit_choices is not None:
            self.bit_choices = tuple(int(b) for b in self.bit_choices)
            if not self.bit_choices or not all(2 <= b <= 16 for b in self.bit_choices):
                raise ValueError(f"bit_choices must be bit widths in 2..16, got {self.bit_choices}")


@CALIBRATORS.register("ranking")
class RankingCalibrator(Calibrator):
    """Ranking-loss interval search (Liu et al. 2021): Pearson + attention ranking, bias correction."""

    Options = RankingOptions
    needs = frozenset({ATTENTION})  # the ranking loss orders attention scores
    supports_mixed_precision = True
    smoke_options = {"num_candidates": 5, "rounds": 1, "rank_pairs": 64}  # conformance kit only

    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> dict[str, Any]:
        options, images = self.options, context.calibration.images
        timing: dict[str, float] = defaultdict(float)
        info: dict[str, Any] = {}
        if context.bits.mixed_precision:
            with _timed(timing, "allocate"):
                info["mixed_precision"] = self._allocate(qmodel, context)
        with _timed(timing, "minmax"):
            observe_and_freeze(qmodel, images, lambda q: MinMaxObserver(), context.device, context.batch_size)
        grid = candidate_grid(options.search_low, options.search_high, options.num_candidates).to(context.device)
        generator = torch.Generator().manual_seed(context.seed)
        layers, corrections, searched = {}, [], set()
        for site in progress_bar(matmul_sites(qmodel), desc="ranking search", unit="matmul", leave=False):
            with _timed(timing, "capture"):
                unit = site.unit(capture(qmodel, images, site.targets(), context.device, context.batch_size))
            with _timed(timing, "search"):
                pairs = None
                if unit.attention_map is not None:
                    pairs = element_pairs(unit.attention_map[0, 0].numel(), options.rank_pairs, generator)
                    pairs = tuple(p.to(context.device) for p in pairs)
                result = alternating_search(unit, grid, options.rounds, options.gamma, options.theta, pairs)
                unit.w.commit(result.alpha_w)
                unit.x.commit(result.alpha_x)
                searched.update(id(q) for q in site.searched_quantizers())
                layers[site.name] = {k: round(v, 6) for k, v in asdict(result).items()}
            if site.kind == "layer" and options.bias_correction and site.module.bias is not None:
                with _timed(timing, "bias_correction"):
                    corrections.append((site.module, bias_correction(unit, result)))
        with torch.no_grad():  # only after every capture, which must see the FP biases
            for layer, correction in corrections:
                layer.bias.sub_(correction)
        return {
            **info,
            "layers": layers,
            "bias_corrected_layers": len(corrections),
            "minmax_quantizers": [name for name, q in act_quantizers(qmodel) if id(q) not in searched],
            "timing_s": {k: round(v, 4) for k, v in timing.items()},
        }

    def _allocate(self, qmodel: nn.Module, context: CalibrationContext) -> dict[str, Any]:
        """Nuclear-norm sensitivities -> per-layer weight bits under the mpX budget, applied in place."""
        budget = context.bits.weight_bits
        choices = self.options.bit_choices or [b for b in (budget - 2, budget, budget + 2) if 2 <= b <= 16]
        layers = {name: layer for name, layer in weight_quantized_layers(qmodel) if layer.weight_bits}
        sizes = {name: layer.weight.numel() for name, layer in layers.items()}
        sensitivity = layer_sensitivity(qmodel, context.calibration.images, context.device, context.batch_size)
        allocation = allocate_bits(sensitivity, sizes, budget, choices)
        for name, bits in allocation.items():
            layers[name].set_weight_bits(bits)
        return {
            "budget": budget, "choices": sorted(set(choices)), "weighting": "parameter count",
            "average_bits": round(average_bits(allocation, sizes), 4),
            "layer_average_bits": round(sum(allocation.values()) / len(allocation), 4),
            "allocation": allocation,
            "sensitivity": {name: round(value, 4) for name, value in sensitivity.items()},
        }


@contextlib.contextmanager
def _timed(timing: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[key] += time.perf_counter() - start
