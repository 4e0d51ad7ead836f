import pytest
import torch

from harness.model.fused import ENVIRONMENT_SWITCH
from harness.quant import fake_quant
from harness.quant.fake_quant import (
    asymmetric_params,
    fake_quant_asymmetric,
    fake_quant_asymmetric_,
    fake_quant_log2,
    fake_quant_symmetric,
    round_ste,
    symmetric_weight_scale,
)


def test_per_channel_symmetric_scale_is_half_range_of_levels():
    weight = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.1, -0.3]])
    scale = symmetric_weight_scale(weight, bits=4)
    # s_c = max|w_c| / (2^(b-1) - 0.5) = max / 7.5 (docs/quantizer.md, Arithmetic)
    assert torch.allclose(scale.flatten(), torch.tensor([1.0 / 7.5, 2.0 / 7.5]))
    assert scale.shape == (2, 1)


def test_symmetric_fake_quant_hand_values():
    weight = torch.tensor([[0.5, -1.0, 0.25, -0.9]])
    scale = symmetric_weight_scale(weight, bits=4)  # 1/7.5
    # w/s = 3.75, -7.5, 1.875, -6.75 -> 4, -7 or -8 (a tie), 2, -7; all inside [-8, 7]
    quantized = fake_quant_symmetric(weight, scale, 4) * 7.5
    assert torch.allclose(quantized[0, [0, 2, 3]], torch.tensor([4.0, 2.0, -7.0]), atol=1e-5)
    assert quantized[0, 1].round().item() in (-7.0, -8.0)


def test_symmetric_clamps_to_signed_range():
    weight = torch.tensor([[1.0, -1.0]])
    scale = torch.tensor([[0.1]])
    assert torch.allclose(fake_quant_symmetric(weight, scale, 4), torch.tensor([[0.7, -0.8]]))


def test_asymmetric_zero_point_and_scale():
    scale, zero_point = asymmetric_params(torch.tensor(-1.0), torch.tensor(3.0), bits=2)
    assert torch.isclose(scale, torch.tensor(4.0 / 3))  # (max - min) / (2^b - 1)
    assert zero_point.item() == 1.0  # round(1 / (4/3)) = round(0.75)
    x = torch.tensor([-2.0, -1.0, 0.0, 0.7, 1.0, 2.9, 10.0])
    # q = clamp(round(x / s + 1), 0, 3); x_hat = (q - 1) * s
    expected = (torch.tensor([0.0, 0, 1, 2, 2, 3, 3]) - 1) * (4.0 / 3)
    assert torch.allclose(fake_quant_asymmetric(x, scale, zero_point, 2), expected)


def test_asymmetric_rounds_after_adding_the_zero_point():
    """round(x / s + z), PSAQ-ViT's order (docs/quantizer.md, Arithmetic): 0.50000006 + 128 is 128.5 in float32,
    which rounds to the even 128; round(x / s) + z would give 129."""
    x, scale, zero_point = torch.tensor([0.50000006]), torch.tensor(1.0), torch.tensor(128.0)
    assert fake_quant_asymmetric(x, scale, zero_point, 8).item() == 0.0
    assert fake_quant_asymmetric(x.requires_grad_(), scale, zero_point, 8).item() == 0.0


def test_asymmetric_in_place_path_equals_the_autograd_path():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 3
    scale, zero_point = asymmetric_params(x.min(), x.max(), bits=4)
    reference = fake_quant_asymmetric(x.clone().requires_grad_(), scale, zero_point, 4).detach()
    assert torch.equal(fake_quant_asymmetric(x, scale, zero_point, 4), reference)


def test_asymmetric_zero_point_clamped_for_positive_ranges():
    _, zero_point = asymmetric_params(torch.tensor(0.5), torch.tensor(2.0), bits=8)
    assert zero_point.item() == 0.0
    _, zero_point = asymmetric_params(torch.tensor(-3.0), torch.tensor(-1.0), bits=8)
    assert zero_point.item() == 255.0


def test_log2_quantizer_levels():
    x = torch.tensor([1.0, 0.5, 0.3, 0.01, 0.0])
    # -log2: 0, 1, 1.74->2, 6.64->7 which is the last level for 3 bits -> 0
    assert torch.allclose(fake_quant_log2(x, 3), torch.tensor([1.0, 0.5, 0.25, 0.0, 0.0]))


def test_round_ste_passes_gradient():
    x = torch.tensor([0.3, 1.6], requires_grad=True)
    round_ste(x).sum().backward()
    assert torch.equal(round_ste(x.detach()), torch.tensor([0.0, 2.0]))
    assert torch.equal(x.grad, torch.ones(2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", [8, 4])
def test_the_fused_quantizer_gives_the_eager_operations_bits(dtype, bits, monkeypatch):
    """Compiled into one pass, the same operations in the same order: every value identical, on a
    contiguous tensor and on a permuted view (attention's q, k, v), and laid out as the eager path lays
    them out: contiguous, what the attention matmuls read without a copy."""
    values = torch.randn(3, 5, 4, 197, 64, generator=torch.Generator().manual_seed(bits), dtype=dtype) * 2.5
    scale, zero_point = asymmetric_params(values.amin() * 0.9, values.amax() * 0.8, bits)  # some values clipped
    results = []
    for switch in ("0", "1"):
        monkeypatch.setenv(ENVIRONMENT_SWITCH, switch)
        inputs = (values, values.permute(2, 0, 3, 1, 4)[1])
        results.append([fake_quant_asymmetric(x, scale, zero_point, bits) for x in inputs])
    if not fake_quant._KERNELS.enabled:
        pytest.skip(f"fused kernels not used here ({fake_quant._KERNELS.failure}); the eager fallback ran")
    for eager, fused in zip(*results):
        assert torch.equal(eager, fused) and eager.stride() == fused.stride() and fused.is_contiguous()
    levels = results[0][0].unique()
    assert len(levels) >= 0.95 * 2 ** bits  # nearly every level used
    assert levels[0] == -zero_point * scale and levels[-1] == (2 ** bits - 1 - zero_point) * scale  # both ends clip


@pytest.mark.parametrize("switch", ["0", "1"])
def test_the_in_place_quantizer_overwrites_its_input_with_the_same_values(switch, monkeypatch):
    monkeypatch.setenv(ENVIRONMENT_SWITCH, switch)
    values = torch.randn(6, 197, 96, generator=torch.Generator().manual_seed(3)) * 2
    scale, zero_point = asymmetric_params(values.amin() * 0.9, values.amax() * 0.9, 4)
    expected = fake_quant_asymmetric(values, scale, zero_point, 4)
    overwritten = values.clone()
    result = fake_quant_asymmetric_(overwritten, scale, zero_point, 4)
    assert result.data_ptr() == overwritten.data_ptr()
    assert torch.equal(overwritten, expected) and not torch.equal(values, expected)
