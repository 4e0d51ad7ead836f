"""lsq_kd (docs/methods.md, Fine-tuning): LSQ's step-size gradient and gradient scale, and the tuner's training."""
import math

import pytest
import torch
from torch import nn

from harness.api import CalibrationSet, TuningContext
from harness.api.quantizer import learnable_scales, lsq_gradient_scale
from harness.api.training import mean_discrepancy
from harness.quant.bits import parse_bits
from harness.quant.calibrate import observe_and_freeze
from harness.quant.convert import QuantConfig, quantize_model
from harness.quant.modules import ActQuantizer, QuantLinear
from harness.quant.observers import MinMaxObserver
from methods.lsq_kd import LsqKdOptions, LsqKdTuner


def _lsq_step_gradient(x: torch.Tensor, scale: float, zero: float, levels: int) -> torch.Tensor:
    """d x̂ / d s of x̂ = (clamp(round(x/s + z), 0, L) - z)·s, element by element (LSQ, eq. 3): the clamp bound
    minus z outside the range, round(x/s + z) - z - x/s inside."""
    code = torch.round(x / scale + zero)
    return torch.where(code < 0, -zero, torch.where(code > levels, levels - zero, code - zero - x / scale))


def _away_from_the_range_ends(x: torch.Tensor, scale: float, zero: float, levels: int) -> torch.Tensor:
    """``x`` without values whose code rounds to 0 or L: there the straight-through value (round(v) - v) + v
    is round(v) only to a unit in the last place, and which side of the clamp it lands on is float rounding."""
    v = x / scale + zero
    return x[((v + 0.5).abs() > 1) & ((v - levels).abs() > 0.5)]


@pytest.mark.parametrize("bits", [4, 8])
def test_activation_step_size_gradient_is_lsq_times_its_gradient_scale(bits):
    torch.manual_seed(0)
    quantizer = ActQuantizer(bits).double()
    quantizer.freeze(torch.tensor(-1.5), torch.tensor(2.5))  # some values fall outside: both clamp branches
    scale, zero = quantizer.scale.item(), quantizer.zero_point.item()
    x = _away_from_the_range_ends(torch.randn(400, dtype=torch.float64) * 2, scale, zero, 2 ** bits - 1)
    assert ((x < -1.5).sum() > 10) and ((x > 2.5).sum() > 10) and x.numel() > 300
    parameter, = learnable_scales(quantizer, weights=False)
    hooks = lsq_gradient_scale(quantizer)
    weights = torch.randn_like(x)
    (quantizer(x) * weights).sum().backward()
    levels = 2 ** bits - 1
    expected = (weights * _lsq_step_gradient(x, scale, zero, levels)).sum() / math.sqrt(x.numel() * levels)
    assert parameter.grad.item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-15)
    for hook in hooks:
        hook.remove()


def test_weight_step_size_gradient_is_scaled_by_one_over_sqrt_of_weights_times_qp():
    torch.manual_seed(0)
    layer = QuantLinear.from_float(nn.Linear(6, 3, bias=False).double(), 4)
    x = torch.randn(4, 6, dtype=torch.float64)
    scale, = learnable_scales(layer, activations=False)
    layer(x).sum().backward()
    raw = scale.grad.clone()
    scale.grad = None
    hooks = lsq_gradient_scale(layer)
    layer(x).sum().backward()
    assert torch.allclose(scale.grad, raw / math.sqrt(layer.weight.numel() * 7), rtol=1e-12, atol=0)
    for hook in hooks:
        hook.remove()


def _calibrated(model: nn.Module, images: torch.Tensor, bits: str) -> nn.Module:
    qmodel = quantize_model(model, parse_bits(bits), QuantConfig())
    observe_and_freeze(qmodel, images, lambda _: MinMaxObserver(), torch.device("cpu"))
    return qmodel


def test_lsq_kd_lowers_the_teacher_student_discrepancy_and_leaves_a_calibrated_model(tiny_vit):
    for parameter in tiny_vit.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(1)
    images = torch.randn(16, 3, 32, 32)
    qmodel = _calibrated(tiny_vit, images, "w4a4")
    teacher_state = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    before = mean_discrepancy(tiny_vit, qmodel, images, "kl", 1.0, 16)
    tuner = LsqKdTuner(LsqKdOptions(epochs=32, batch_size=8, warmup_epochs=2, weight_lr=1e-2, scale_lr=1e-3, temperature=1.0))
    info = tuner.tune(qmodel, TuningContext(fp_model=tiny_vit, calibration=CalibrationSet(images),
                                            bits=parse_bits("w4a4"), seed=0, device=torch.device("cpu")))
    assert info["steps"] == 60 and info["discrepancy"] == "kl"
    assert info["discrepancy_before"] == pytest.approx(before, rel=1e-6)
    assert info["discrepancy_after"] < 0.8 * before  # trained against the teacher on these images
    assert all(torch.equal(teacher_state[k], v) for k, v in tiny_vit.state_dict().items())
    assert not any(p.requires_grad for p in qmodel.parameters())
    assert all(q.frozen for q in qmodel.modules() if isinstance(q, ActQuantizer))
    # the learned scales are buffers again, and an activation quantizer's range says what it now covers
    quantizer = next(q for q in qmodel.modules() if isinstance(q, ActQuantizer) and q.kind == "uniform")
    assert "scale" in dict(quantizer.named_buffers())
    assert quantizer.high.item() == pytest.approx(((2 ** 4 - 1 - quantizer.zero_point) * quantizer.scale).item())


def test_lsq_kd_options_name_the_accepted_discrepancies():
    with pytest.raises(ValueError, match="discrepancy must be one of auto, kl, mse"):
        LsqKdOptions(discrepancy="l1")
