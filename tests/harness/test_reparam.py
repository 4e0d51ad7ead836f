"""Searched quantizers and the per-channel → per-tensor reparameterization (docs/quantizer.md)."""
import math

import pytest
import torch
from torch import nn

from harness.quant.bits import parse_bits
from harness.quant.convert import QuantConfig, quantize_model
from harness.quant.fake_quant import fake_quant_log_sqrt2, fake_quant_offset_after_round
from harness.quant.modules import ActQuantizer
from harness.quant.reparam import fold_channel_params, norm_linear_pairs
from harness.quant.search import percentile_mse_log_sqrt2_scale, percentile_mse_params, quantiles


def test_offset_after_round_keeps_a_fractional_zero_point_off_the_grid():
    x = torch.tensor([-1.0, -0.26, 0.0, 0.24, 0.76, 10.0])
    # s = 0.5, z = 1.5: q = clamp(round(x / s) + 1.5, 0, 3); only the clamp bounds move
    out = fake_quant_offset_after_round(x, torch.tensor(0.5), torch.tensor(1.5), 2)
    assert out.tolist() == [-0.75, -0.5, 0.0, 0.0, 0.75, 0.75]


def test_log_sqrt2_levels_are_half_octaves_below_the_scale():
    scale = torch.tensor(0.5)
    x = scale * torch.tensor([1.0, 2 ** -0.5, 0.5, 2 ** -1.5, 2 ** -7.5, 2 ** -8.0, 0.0, 3.0])
    out = fake_quant_log_sqrt2(x, scale, 4)  # q in 0..15, x_hat = s 2^(-q/2); q >= 16 -> 0
    expected = scale * torch.tensor([1.0, 2 ** -0.5, 0.5, 2 ** -1.5, 2 ** -7.5, 0.0, 0.0, 1.0])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)


def test_percentile_search_takes_each_rows_best_clipping():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 10000, generator=generator, dtype=torch.float64)
    rows[1, :5] = 1000.0  # far outliers: covering them (p = 0.99999) beats clipping them
    percentiles = [0.999, 0.9999, 0.99999]
    scale, zero_point = percentile_mse_params(rows, 4, percentiles)
    for row in range(3):
        candidates = []
        for p in percentiles:
            high, low = torch.quantile(rows[row], p), torch.quantile(rows[row], 1.0 - p)
            s = (high - low) / 15
            z = torch.round(-low / s)
            error = (fake_quant_offset_after_round(rows[row], s, z, 4) - rows[row]).pow(2).mean().item()
            candidates.append((error, s.item(), z.item()))
        best = min(candidates, key=lambda c: c[0])
        assert (scale[row].item(), zero_point[row].item()) == pytest.approx(best[1:], rel=1e-12)
    assert scale[1] > 60 > 1 > scale[0]


def test_log_sqrt2_scale_search_returns_one_of_the_percentiles():
    attn = torch.softmax(torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(1)) * 3, dim=-1)
    scale = percentile_mse_log_sqrt2_scale(attn, 4, [0.999, 0.9999, 0.99999])
    # the candidates as the default (published) arithmetic computes them (docs/methods.md, RepQ-ViT, Quantiles)
    candidates = quantiles(attn.reshape(1, -1), [0.999, 0.9999, 0.99999])[:, 0].tolist()
    assert scale.item() in candidates


def test_folding_keeps_the_function_and_makes_the_quantizer_per_tensor():
    torch.manual_seed(0)
    norm, linear = nn.LayerNorm(8, dtype=torch.float64), nn.Linear(8, 5, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(4, 3, 8, dtype=torch.float64)
    before = linear(norm(x))
    y = norm(x).detach()
    scale = torch.linspace(0.05, 0.4, 8, dtype=torch.float64)
    zero_point = torch.full((8,), 7.0, dtype=torch.float64)  # equal zero points: the fold is exact
    per_channel = fake_quant_offset_after_round(y, scale, zero_point, 4)
    target_scale, target_zero_point = fold_channel_params(norm, linear, scale, zero_point)
    torch.testing.assert_close(linear(norm(x)), before, rtol=1e-12, atol=1e-12)
    assert (target_scale.item(), target_zero_point.item()) == pytest.approx((scale.mean().item(), 7.0))
    # per-tensor quantization of the folded output is per-channel quantization of the original, per-channel rescaled
    folded = fake_quant_offset_after_round(norm(x), target_scale, target_zero_point, 4)
    ratio = scale / target_scale
    torch.testing.assert_close(folded * ratio, per_channel, rtol=1e-12, atol=1e-12)
    # with unequal zero points the mean is fractional and each channel's grid moves by frac(z_c - mean z)
    norm2, linear2 = nn.LayerNorm(8, dtype=torch.float64), nn.Linear(8, 5, dtype=torch.float64)
    _, fractional = fold_channel_params(norm2, linear2, scale, torch.arange(8, dtype=torch.float64))
    assert fractional.item() == 3.5


def test_norm_linear_pairs_in_vit_and_swin(tiny_vit, tiny_swin):
    bits = parse_bits("w4a4")
    vit = quantize_model(tiny_vit, bits, QuantConfig())
    assert [(type(n).__name__, type(l).__name__) for n, l in norm_linear_pairs(vit)] == \
        [("LayerNorm", "QuantLinear")] * 4
    assert norm_linear_pairs(vit)[0][1] is vit.blocks[0].attn.qkv
    swin = quantize_model(tiny_swin, bits, QuantConfig())
    linears = {id(linear) for _, linear in norm_linear_pairs(swin)}
    assert id(swin.layers[1].downsample.reduction) in linears
    assert len(linears) == 4 * 2 + 1


def test_log_sqrt2_attention_quantizer_freezes_with_the_range_top_as_scale():
    quantizer = ActQuantizer(4, kind="log_sqrt2")
    quantizer.freeze(torch.tensor(0.0), torch.tensor(0.25))
    assert quantizer.scale.item() == 0.25
    out = quantizer(torch.tensor([0.25, 0.125, 1.0]))
    torch.testing.assert_close(out, torch.tensor([0.25, 0.125, 0.25]))
    assert QuantConfig(attn_quantizer="log_sqrt2").attn_quantizer == "log_sqrt2"
    assert not math.isnan(out.sum().item())
