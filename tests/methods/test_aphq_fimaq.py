"""Calibrators ``aphq`` and ``fimaq`` (docs/methods.md, APHQ-ViT and FIMA-Q) on a tiny random-init DeiT with
tiny settings: every quantizer ends frozen with the shapes the defaults give, reconstruction moves the weights
onto their grid, and the objectives behave as documented."""
from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from calibration import calibrate
from harness.model.instrument import get_point
from harness.quant.modules import act_quantizers
from harness.quant.reconstruction import AdaRound, FisherDPLR, rounding_exponent
from methods.aphq_vit.calibrator import APHQCalibrator, APHQOptions
from methods.fima_q.calibrator import FIMAQCalibrator, FIMAQOptions

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


TINY = dict(calib_size=4, optim_size=8, search_candidates=16, search_rounds=1, iterations=2, batch_size=4)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()


def _images() -> torch.Tensor:
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_aphq_swaps_gelu_for_relu_and_freezes_every_quantizer():
    model = _model().double()
    qmodel, info = calibrate(model, "w4a4", APHQCalibrator(APHQOptions(**TINY, mlp_iterations=2)), _images())
    assert all(q.frozen for _, q in act_quantizers(qmodel))
    assert all(isinstance(b.mlp.act, torch.nn.ReLU) for b in qmodel.blocks)
    assert all(isinstance(b.mlp.act, torch.nn.GELU) for b in model.blocks)  # the FP model is left alone
    assert info["reparameterized_norms"] == 4 and set(info["block_loss"]) == {"patch_embed", "blocks.0", "blocks.1",
                                                                              "head"}
    attention = qmodel.blocks[0].attn
    assert get_point(attention, "q").scale.shape == (2, 1, 1)  # per head
    assert get_point(qmodel.patch_embed.proj, "in") is None  # 8-bit input: passed through, as the authors' conv
    with torch.no_grad():
        assert torch.isfinite(qmodel(_images())).all()


def test_fimaq_learns_per_token_scales():
    qmodel, info = calibrate(_model().double(), "w4a4", FIMAQCalibrator(FIMAQOptions(**TINY, rank=2)), _images())
    assert all(q.frozen for _, q in act_quantizers(qmodel))
    tokens = 17
    assert get_point(qmodel.blocks[0].attn.qkv, "in").scale.shape == (tokens, 1)
    assert get_point(qmodel.blocks[0].attn, "v").scale.shape == (2, 1, 16)
    assert get_point(qmodel.blocks[0].attn, "k").scale.shape == (2, tokens, 1)
    with torch.no_grad():
        assert torch.isfinite(qmodel(_images())).all()


def test_reconstructed_weights_sit_on_their_grid():
    qmodel, _ = calibrate(_model().double(), "w4a4", APHQCalibrator(APHQOptions(**TINY, mlp_reconstruction=False)),
                          _images())
    fc1 = qmodel.blocks[0].mlp.fc1
    levels = fc1.weight / fc1.weight_scale
    assert torch.allclose(levels, levels.round(), atol=1e-9)


def test_adaround_starts_at_the_fraction_and_hardens():
    weight = torch.randn(4, 6, dtype=torch.float64)
    scale, zero_point = torch.full((4, 1), 0.1, dtype=torch.float64), torch.full((4, 1), 8.0, dtype=torch.float64)
    rounding = AdaRound(weight, scale, zero_point, 4)
    fraction = weight / scale - torch.floor(weight / scale)
    torch.testing.assert_close(rounding.rounding(), fraction)
    rounding.soft = False
    nearest = (torch.clamp(torch.round(weight / scale) + zero_point, 0, 15) - zero_point) * scale
    torch.testing.assert_close(rounding(weight), nearest)


def test_rounding_exponent_decays_after_warmup():
    assert rounding_exponent(1, 100, 0.2) == 20 and rounding_exponent(100, 100, 0.2) == 2
    assert rounding_exponent(60, 100, 0.2) == pytest.approx(11)


def test_fisher_low_rank_term_is_the_quadratic_form():
    loss = FisherDPLR(rank=2)
    generator = torch.Generator().manual_seed(0)
    loss.grads = torch.rand(2, 6, generator=generator, dtype=torch.float64)
    deltas = torch.rand(2, 6, generator=generator, dtype=torch.float64)
    loss.inverse = torch.linalg.inv(deltas @ deltas.t())
    pred, target = (torch.randn(3, 2, 3, generator=generator, dtype=torch.float64) for _ in range(2))
    low_rank, diagonal = loss.terms(pred, target)
    e = (pred - target).abs().reshape(3, -1)
    expected = torch.stack([e[i] @ loss.grads.t() @ loss.inverse @ loss.grads @ e[i] for i in range(3)]).mean()
    torch.testing.assert_close(low_rank, expected)
    torch.testing.assert_close(diagonal, (e.pow(2) * loss.grads.mean(0)).mean())
