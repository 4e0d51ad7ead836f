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
from harness.api import at_least, positive
from harness.api.quantizer import FisherDPLR, LogitKL, SearchReconstructOptions, reconstruct


@dataclass
class FIMAQOptions(SearchReconstructOptions):
    """The authors' defaults, configs/4bit/best.py and their code (docs/methods.md, FIMA-Q); the search and
    reconstruction options are those APHQ-ViT shares (harness.quant.search_reconstruct)."""

    token_wise: bool = True  # token_channel_wise
    rank: int = at_least(1, 5)  # k
    low_rank_weight: float = positive(1.0)  # p1
    diagonal_weight: float = positive(1.0)  # p2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ValueError("rank must be >= 1")


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
        info: dict[str, Any] = options.search(qmodel, images, device, context.batch_size, options.token_wise)
        if options.iterations:
            info["block_loss"] = reconstruct(
                qmodel, context.fp_model, images[:options.optim_size], device,
                lambda unit: LogitKL(None) if unit.is_head else FisherDPLR(
                    options.rank, options.low_rank_weight, options.diagonal_weight),
                options.reconstruction(), context.seed, context.batch_size)
        return info
