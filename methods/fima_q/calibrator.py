"""Calibrator ``fimaq``: FIMA-Q's pipeline (docs/methods.md, FIMA-Q).

1. Calibration: every quantizer searched on a grid by output MSE over the first ``calib_size`` images
   (:func:`harness.quant.grid_search.calibrate_by_grid_search`), per head for the attention matmuls; the
   searched activation scales are then repeated per token (option ``token_wise``).
2. Block reconstruction with AdaRound and QDrop under the Fisher-information loss, diagonal plus rank ``rank``,
   refreshed ``rank`` times per unit from the quantized model (:class:`harness.quant.reconstruction.FisherDPLR`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from harness.api import BLOCKS, CALIBRATORS, LOGITS, CalibrationContext, Calibrator
from harness.api import at_least, positive, probability
from harness.api.quantizer import FisherDPLR, LogitKL, ReconstructionSettings, calibrate_by_grid_search, reconstruct


@dataclass
class FIMAQOptions:
    """The authors' defaults, configs/4bit/best.py and their code (docs/methods.md, FIMA-Q)."""

    calib_size: int = at_least(1, 128)
    optim_size: int = at_least(1, 1024)
    search_candidates: int = at_least(2, 128)  # eq_n
    search_rounds: int = at_least(0, 3)  # search_round
    search_batch: int = at_least(1, 32)  # calib_batch_size
    input_bits: int = at_least(8, 8)  # qconv_a_bit: >= 8, the patch embedding's input stays unquantized
    per_head: bool = True  # matmul_head_channel_wise
    token_wise: bool = True  # token_channel_wise
    reparameterize: bool = True
    iterations: int = at_least(0, 20000)  # per unit
    batch_size: int = at_least(1, 32)  # optim_batch_size
    drop_prob: float = probability(0.5)
    temperature: float = positive(20.0)  # temp
    rank: int = at_least(1, 5)  # k
    low_rank_weight: float = positive(1.0)  # p1
    diagonal_weight: float = positive(1.0)  # p2

    def __post_init__(self) -> None:
        if min(self.calib_size, self.optim_size, self.batch_size, self.search_batch, self.rank) < 1:
            raise ValueError("sizes and rank must be >= 1")


@CALIBRATORS.register("fimaq")
class FIMAQCalibrator(Calibrator):
    """FIMA-Q: grid-searched uniform quantizers (per token), AdaRound+QDrop under the Fisher DPLR loss."""

    Options = FIMAQOptions
    version = "1"
    needs = frozenset({BLOCKS, LOGITS})  # its losses are defined on the model's logits (docs/methods.md)
    smoke_options: ClassVar[dict[str, Any]] = {"iterations": 2, "search_candidates": 16, "search_rounds": 1,
                                               "rank": 1}

    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> dict[str, Any]:
        options, images, device = self.options, context.calibration.images, context.device
        info: dict[str, Any] = calibrate_by_grid_search(
            qmodel, images[:options.calib_size], device, context.batch_size, count=options.search_candidates,
            rounds=options.search_rounds, batch_size=options.search_batch, per_head=options.per_head,
            token_wise=options.token_wise, input_bits=options.input_bits, reparameterize=options.reparameterize)
        settings = ReconstructionSettings(iterations=options.iterations, batch_size=options.batch_size,
                                          drop_prob=options.drop_prob, temperature=options.temperature)
        if options.iterations:
            info["block_loss"] = reconstruct(
                qmodel, context.fp_model, images[:options.optim_size], device,
                lambda unit: LogitKL(None) if unit.is_head else FisherDPLR(
                    options.rank, options.low_rank_weight, options.diagonal_weight, options.temperature),
                settings, context.seed, context.batch_size)
        return info
