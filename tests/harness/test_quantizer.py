import copy

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from harness.errors import HarnessError
from harness.model.arch import instrumented
from harness.model.arch import is_window_attention
from harness.model.instrument import attach_point
from harness.plugin.calibrators import MinMaxCalibrator, OMSECalibrator, PercentileCalibrator
from harness.plugin.method import CalibrationContext, CalibrationSet
from harness.priors.patch_similarity import attn_v_probes
from harness.quant.bits import parse_bits
from harness.quant.convert import PROFILES, QuantConfig, QuantProfile, quantize_model
from harness.quant.modules import ActQuantizer, QuantConv2d, QuantLinear, act_quantizers, in_place_evaluation


def _calibrate(qmodel, fp_model, images, calibrator=None, bits="w8a8"):
    (calibrator or MinMaxCalibrator()).calibrate(qmodel, CalibrationContext(
        fp_model=fp_model, calibration=CalibrationSet(images), bits=parse_bits(bits), seed=0, device=torch.device("cpu")))
    return qmodel


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_instrumented_forward_equals_timm_forward(fixture, request):
    model = request.getfixturevalue(fixture)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        with instrumented(model):
            assert any(getattr(type(m), "is_dfq_attention", False) for m in model.modules())
            swapped = model(x)
    assert torch.allclose(reference, swapped, atol=1e-5)
    assert not any(getattr(type(m), "is_dfq_attention", False) for m in model.modules())


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_attn_v_probes_read_the_same_values_through_timms_fused_kernel(fixture, request, monkeypatch):
    """Only attn_v probed: the fused kernel computes it; with fused attention off the explicit path does."""
    model = request.getfixturevalue(fixture)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    values = []
    for fused in (True, False):
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = fused
        with attn_v_probes(model) as probes, torch.no_grad():
            model(images)
            values.append([probe.value for probe in probes])
        assert bool(calls) == fused
        calls.clear()
    assert len(values[0]) >= 2 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*values))


def test_standard_profile_placement_on_vit(tiny_vit):
    qmodel = quantize_model(tiny_vit, parse_bits("w4a8"), QuantConfig())
    names = {name for name, _ in act_quantizers(qmodel)}
    # depth 2: qkv, proj, fc1, fc2 inputs + q, k, attn, v per block; patch-embed and head inputs
    assert len(names) == 2 * 8 + 2
    assert "blocks.0.attn.qkv.dfq_points.in" in names and "blocks.1.attn.dfq_points.attn" in names
    assert "head.dfq_points.in" in names and "patch_embed.proj.dfq_points.in" in names
    assert not any("norm" in name for name in names)  # LayerNorm stays FP in `standard`
    linears = [m for m in qmodel.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, QuantLinear) and m.weight_bits == 4 for m in linears)
    assert isinstance(qmodel.patch_embed.proj, QuantConv2d)


def test_psaq_profile_placement_on_vit(tiny_vit):
    qmodel = quantize_model(tiny_vit, parse_bits("w8a8"), QuantConfig(profile="psaq"))
    names = {name for name, _ in act_quantizers(qmodel)}
    per_block = {"norm1.dfq_points.out", "norm2.dfq_points.out", "attn.qkv.dfq_points.out",
                 "attn.dfq_points.scores", "attn.proj.dfq_points.in", "attn.proj.dfq_points.out",
                 "mlp.fc2.dfq_points.in", "mlp.fc2.dfq_points.out", "dfq_points.residual1", "dfq_points.residual2"}
    # the image, the conv output, class + patch tokens, the position embedding itself, their sum; the
    # final norm's class-token rows are the head's input (no quantizer over all tokens); the logits
    expected = {f"blocks.{i}.{p}" for i in range(2) for p in per_block} | {
        "patch_embed.proj.dfq_points.in", "patch_embed.proj.dfq_points.out", "dfq_points.tokens",
        "dfq_points.pos_embed", "dfq_points.embedded", "head.dfq_points.in", "head.dfq_points.out"}
    assert names == expected
    assert not any(name.endswith(".attn") for name in names)  # post-softmax stays FP in `psaq`


def test_swin_profiles_cover_windows_and_merging(tiny_swin):
    standard = {n for n, _ in act_quantizers(quantize_model(tiny_swin, parse_bits("w4a4"), QuantConfig()))}
    assert "layers.1.downsample.reduction.dfq_points.in" in standard
    assert "layers.0.blocks.1.attn.dfq_points.q" in standard
    psaq = {n for n, _ in act_quantizers(quantize_model(tiny_swin, parse_bits("w4a4"), QuantConfig(profile="psaq")))}
    per_block = {"norm1.dfq_points.out", "norm2.dfq_points.out", "attn.qkv.dfq_points.out", "attn.dfq_points.scores",
                 "attn.dfq_points.bias_table", "attn.dfq_points.scores_biased", "attn.proj.dfq_points.in",
                 "attn.proj.dfq_points.out", "mlp.fc2.dfq_points.in", "mlp.fc2.dfq_points.out",
                 "dfq_points.residual1", "dfq_points.residual2"}
    expected = {f"layers.{s}.blocks.{b}.{p}" for s in range(2) for b in range(2) for p in per_block} | {
        "patch_embed.proj.dfq_points.in", "patch_embed.proj.dfq_points.out", "patch_embed.norm.dfq_points.out",
        "layers.1.downsample.norm.dfq_points.out", "layers.1.downsample.reduction.dfq_points.out",
        "norm.dfq_points.out", "head.fc.dfq_points.in", "head.fc.dfq_points.out"}
    assert psaq == expected


@pytest.mark.parametrize("profile, observed_with", [("standard", 4), ("psaq", None)])
def test_profiles_observe_ranges_with_quantized_or_fp_weights(tiny_vit, profile, observed_with):
    """`standard` observes with the quantized weights, `psaq` with the FP ones (docs/quantizer.md, Calibration)."""
    qmodel = quantize_model(tiny_vit, parse_bits("w4a8"), QuantConfig(profile=profile))
    seen = []
    qmodel.blocks[1].mlp.fc2.register_forward_pre_hook(lambda layer, args: seen.append(layer.weight_bits))
    _calibrate(qmodel, tiny_vit, torch.randn(4, 3, 32, 32))
    assert seen == [observed_with] and qmodel.blocks[1].mlp.fc2.weight_bits == 4


def test_psaq_position_embedding_points_refuse_other_layouts():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, num_classes=10, embed_dim=32, depth=1, num_heads=2,
                              reg_tokens=1).eval()
    qmodel = quantize_model(model, parse_bits("w8a8"), QuantConfig(profile="psaq"))
    with pytest.raises(HarnessError, match="ViT/DeiT's layout"):
        _calibrate(qmodel, model, torch.randn(2, 3, 32, 32))


def test_keep_first_last_fp(tiny_vit):
    qmodel = quantize_model(tiny_vit, parse_bits("w4a4"), QuantConfig(keep_first_last_fp=True))
    assert qmodel.head.weight_bits is None and qmodel.patch_embed.proj.weight_bits is None
    assert qmodel.blocks[0].attn.qkv.weight_bits == 4
    names = {n for n, _ in act_quantizers(qmodel)}
    assert "head.dfq_points.in" not in names and "patch_embed.proj.dfq_points.in" not in names


@pytest.mark.parametrize("profile", ["standard", "psaq"])
@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_fp_model_untouched_and_high_bits_match_fp(fixture, profile, request):
    model = request.getfixturevalue(fixture)
    before = copy.deepcopy(model.state_dict())
    images = torch.randn(16, 3, 32, 32)
    qmodel = _calibrate(quantize_model(model, parse_bits("w16a16"), QuantConfig(profile=profile)), model, images)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert type(model.blocks[0].attn if hasattr(model, "blocks") else model.layers[0].blocks[0].attn).__name__ in (
        "Attention", "WindowAttention")
    with torch.no_grad():
        assert torch.allclose(qmodel(images), model(images), atol=1e-2)


def test_low_bits_change_outputs_and_ranges_freeze(tiny_vit):
    images = torch.randn(16, 3, 32, 32)
    qmodel = _calibrate(quantize_model(tiny_vit, parse_bits("w4a4"), QuantConfig()), tiny_vit, images)
    assert all(q.frozen for _, q in act_quantizers(qmodel))
    with torch.no_grad():
        error = (qmodel(images) - tiny_vit(images)).abs().mean()
        ranges = [(q.low.clone(), q.high.clone()) for _, q in act_quantizers(qmodel)]
        qmodel(10 * torch.randn(8, 3, 32, 32))  # evaluation never moves a frozen range
    assert error > 1e-3
    assert all(torch.equal(lo, q.low) and torch.equal(hi, q.high)
               for (lo, hi), (_, q) in zip(ranges, act_quantizers(qmodel)))


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_calibrated_model_is_batch_size_invariant(fixture, request):
    model = request.getfixturevalue(fixture)
    qmodel = _calibrate(quantize_model(model, parse_bits("w4a4"), QuantConfig()), model, torch.randn(16, 3, 32, 32))
    images = torch.randn(12, 3, 32, 32)
    with torch.no_grad():
        whole = qmodel(images)
        pieces = torch.cat([qmodel(images[i:i + 5]) for i in range(0, 12, 5)])
        single = torch.cat([qmodel(images[i:i + 1]) for i in range(12)])
    assert torch.allclose(whole, pieces, atol=1e-5) and torch.allclose(whole, single, atol=1e-5)


def test_minmax_range_is_observed_extremes():
    quantizer = ActQuantizer(bits=8)
    model = torch.nn.Sequential(quantizer)
    _calibrate_plain(model, torch.tensor([[-2.0, 0.5], [1.0, 3.0]]), MinMaxCalibrator())
    assert quantizer.low.item() == -2.0 and quantizer.high.item() == 3.0


def test_percentile_clips_outliers():
    values = torch.cat([torch.linspace(-1, 1, 100_000), torch.tensor([50.0])]).view(1, -1)
    quantizer = ActQuantizer(bits=8)
    _calibrate_plain(torch.nn.Sequential(quantizer), values, PercentileCalibrator())
    assert 0.99 < quantizer.high.item() < 1.01 and -1.01 < quantizer.low.item() < -0.99


def test_omse_never_worse_than_minmax_on_heavy_tails():
    torch.manual_seed(0)
    values = torch.distributions.StudentT(2.0).sample((1, 50_000))
    errors = {}
    for name, calibrator in (("minmax", MinMaxCalibrator()), ("omse", OMSECalibrator())):
        quantizer = ActQuantizer(bits=4)
        _calibrate_plain(torch.nn.Sequential(quantizer), values, calibrator)
        errors[name] = (quantizer(values) - values).pow(2).mean().item()
    assert errors["omse"] < 0.7 * errors["minmax"]  # measured 2.14 vs 3.64


def test_calibration_rejects_non_finite_images(tiny_vit):
    images = torch.randn(4, 3, 32, 32)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(HarnessError, match="non-finite"):
        _calibrate(quantize_model(tiny_vit, parse_bits("w8a8"), QuantConfig()), tiny_vit, images)


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(HarnessError, match="known quantizer profiles: psaq, standard"):
        QuantConfig(profile="fancy")


@pytest.fixture
def linear_inputs_profile():
    """A profile registered from outside the quantizer: Linear inputs only, ranges observed on FP weights,
    refusing Swin's attention."""
    def place(model, act_bits, config, first, last, keep_ends):
        for module in list(model.modules()):
            if isinstance(module, QuantLinear):
                attach_point(module, "in", ActQuantizer(act_bits))

    PROFILES.add("linear_inputs", QuantProfile(place=place, observe_in_fp=True,
                                               covers=lambda attention: not is_window_attention(attention),
                                               coverage="non-windowed attention"))
    yield "linear_inputs"
    PROFILES._entries.pop("linear_inputs")


def test_a_registered_profile_places_its_quantizers(tiny_vit, tiny_swin, linear_inputs_profile):
    config = QuantConfig(profile=linear_inputs_profile)
    qmodel = quantize_model(tiny_vit, parse_bits("w4a4"), config)
    linears = [name for name, m in qmodel.named_modules() if isinstance(m, QuantLinear)]
    assert sorted(name for name, _ in act_quantizers(qmodel)) == sorted(f"{name}.dfq_points.in" for name in linears)
    assert config.observe_in_fp and all(m.observe_in_fp for m in qmodel.modules() if isinstance(m, QuantLinear))
    with pytest.raises(HarnessError, match="^profile 'linear_inputs' covers non-windowed attention only; use "
                                           "--profile standard for SwinTransformer$"):
        quantize_model(tiny_swin, parse_bits("w4a4"), config)


def test_a_profile_must_be_a_quant_profile():
    with pytest.raises(HarnessError, match="^quantizer profile 'bare' cannot be registered: dict {'observe_in_fp': "
                                           "True} is not a QuantProfile"):
        PROFILES.add("bare", {"observe_in_fp": True})


def _calibrate_plain(model, data, calibrator):
    calibrator.calibrate(model, CalibrationContext(
        fp_model=model, calibration=CalibrationSet(data), bits=parse_bits("w8a8"), seed=0, device=torch.device("cpu")))


def test_instrumented_context_keeps_an_already_quantized_model_instrumented(tiny_vit):
    qmodel = quantize_model(tiny_vit, parse_bits("w8a8"), QuantConfig())
    with instrumented(qmodel):
        pass
    assert type(qmodel.blocks[0].attn).__name__ == "InstrumentedAttention"


def test_points_can_be_removed_and_reattached_without_double_hooks(tiny_vit):
    from harness.model.instrument import attach_point, get_point, remove_point

    layer = tiny_vit.blocks[0].mlp.fc1
    calls = []

    class Count(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            return x

    attach_point(layer, "in", Count())
    remove_point(layer, "in")
    assert get_point(layer, "in") is None and not hasattr(layer, "dfq_points")
    attach_point(layer, "in", Count())
    with torch.no_grad():
        tiny_vit(torch.randn(1, 3, 32, 32))
    assert len(calls) == 1
    remove_point(layer, "in")


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_evaluation_overwrites_only_the_declared_temporaries_and_changes_no_value(fixture, request):
    model = request.getfixturevalue(fixture)
    qmodel = _calibrate(quantize_model(model, parse_bits("w4a4"), QuantConfig()), model, torch.randn(8, 3, 32, 32))
    temporaries = {name.replace(".dfq_points", "").rpartition("blocks.0.")[2]
                   for name, quantizer in act_quantizers(qmodel) if quantizer.input_is_temporary and "blocks.0." in name}
    assert temporaries == {"attn.qkv.in", "attn.proj.in", "attn.attn", "mlp.fc1.in", "mlp.fc2.in"}
    block = qmodel.blocks[0] if hasattr(qmodel, "blocks") else qmodel.layers[0].blocks[0]
    hidden, fc2_input = [], []
    block.mlp.act.register_forward_hook(lambda module, args, output: hidden.append(output.data_ptr()))
    block.mlp.fc2.register_forward_pre_hook(lambda module, args: fc2_input.append(args[0].data_ptr()))
    images = torch.randn(4, 3, 32, 32)
    untouched = images.clone()
    with torch.no_grad():
        plain = qmodel(images)
        with in_place_evaluation():
            overwriting = qmodel(images)
    assert torch.equal(plain, overwriting) and torch.equal(images, untouched)
    assert hidden[0] != fc2_input[0] and hidden[1] == fc2_input[1]  # a new tensor, then the activation itself
    block.mlp.fc2.dfq_points["in"].register_forward_pre_hook(lambda module, args: None)
    with torch.no_grad(), in_place_evaluation():
        qmodel(images)
    assert hidden[2] != fc2_input[2]  # a hook on the quantizer may keep its input: no overwriting then
