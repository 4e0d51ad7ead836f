"""The core's range calibrators (docs/methods.md, Baselines): min-max, percentile, OMSE."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness.plugin.method import CalibrationContext, Calibrator
from harness.plugin.options import Range, at_least, percent, ranged
from harness.plugin.registry import CALIBRATORS
from harness.quant.calibrate import mse_weight_scales, observe_and_freeze
from harness.quant.observers import MinMaxObserver, MSEObserver, PercentileObserver


@CALIBRATORS.register("minmax")
class MinMaxCalibrator(Calibrator):
    """Ranges = observed min/max; weights per-channel max|w| (PSAQ-ViT's code)."""

    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> None:
        observe_and_freeze(qmodel, context.calibration.images, lambda q: MinMaxObserver(),
                           context.device, context.batch_size)


@dataclass
class PercentileOptions:
    percentile: float = percent(99.99)  # docs/methods.md, Baselines: 99.99 % of values inside, at each end


@CALIBRATORS.register("percentile")
class PercentileCalibrator(Calibrator):
    """Ranges = lower/upper percentile of activations; weights per-channel max|w|."""

    Options = PercentileOptions

    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> None:
        observe_and_freeze(qmodel, context.calibration.images,
                           lambda q: PercentileObserver(self.options.percentile),
                           context.device, context.batch_size)


@dataclass
class OMSEOptions:
    num_candidates: int = at_least(1, 100)  # clipping ratios searched per quantizer (unpublished; our default)
    weight_min_ratio: float = ranged(Range(low=0, high=1, low_open=True), 0.5)  # smallest weight clipping ratio searched
    sample_limit: int = at_least(1, 262144)  # activation values kept per quantizer for the search


@CALIBRATORS.register("omse")
class OMSECalibrator(Calibrator):
    """MSE-optimal clipping for activations (per tensor) and weights (per channel)."""

    Options = OMSEOptions

    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> None:
        options = self.options
        mse_weight_scales(qmodel, options.num_candidates, options.weight_min_ratio)
        observe_and_freeze(
            qmodel, context.calibration.images,
            lambda q: MSEObserver(q.bits, options.num_candidates, options.sample_limit, context.seed),
            context.device, context.batch_size,
        )
