"""One calibration the way a grid's cell runs it, for tests that look at what a calibrator did."""
from __future__ import annotations

import torch
from torch import nn

from harness.plugin.method import CalibrationContext, CalibrationSet, Calibrator
from harness.quant.bits import parse_bits
from harness.quant.convert import QuantConfig, quantize_model


def calibrate(model: nn.Module, bits: str, calibrator: Calibrator, images: torch.Tensor,
              config: QuantConfig | None = None, batch_size: int = 32) -> tuple[nn.Module, dict]:
    """``model`` quantized at ``bits`` in the images' dtype and calibrated on them; with the calibrator's info."""
    spec = parse_bits(bits)
    qmodel = quantize_model(model, spec, config or QuantConfig()).to(images.dtype)  # the quantizers' buffers too
    info = calibrator.calibrate(qmodel, CalibrationContext(
        fp_model=model, calibration=CalibrationSet(images), bits=spec, seed=0, device=torch.device("cpu"),
        batch_size=batch_size))
    return qmodel, info
