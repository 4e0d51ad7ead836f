import copy
import itertools

import pytest
import torch

from harness.errors import HarnessError
from harness.plugin.calibrators import MinMaxCalibrator
from harness.plugin.method import CalibrationContext, CalibrationSet
from harness.plugin.registry import CALIBRATORS, METHODS
from harness.progress import set_progress
from harness.quant.bits import parse_bits
from harness.quant.convert import QuantConfig, quantize_model
from harness.quant.modules import ActQuantizer, QuantLinear, act_quantizers
from harness.run.grid import GridSpec, expand
from methods.ranking import RankingCalibrator, RankingOptions
from methods.ranking.mixed_precision import allocate_bits, average_bits
from methods.ranking.objective import element_pairs, pearson, ranking_loss
from methods.ranking.search import (
    MatmulUnit,
    Operand,
    activation_operand,
    alternating_search,
    candidate_grid,
    weight_operand,
)

torch.set_num_threads(1)
set_progress(False)
QUICK = {"num_candidates": 15, "rounds": 2}  # a coarser grid keeps the end-to-end tests fast


def _context(fp_model, images, bits="w4a4"):
    return CalibrationContext(fp_model=fp_model, calibration=CalibrationSet(images), bits=parse_bits(bits), seed=0,
                              device=torch.device("cpu"), batch_size=8)


def _calibrated(model, images, bits="w4a4", options=None):
    qmodel = quantize_model(model, parse_bits(bits), QuantConfig())
    info = RankingCalibrator(options or RankingOptions(**QUICK)).calibrate(qmodel, _context(model, images, bits))
    return qmodel, info


@torch.no_grad()
def _objective(unit: MatmulUnit, alpha_w: float, alpha_x: float, gamma=0.0, theta=0.0, pairs=None) -> float:
    """The objective of docs/methods.md, Ranking-loss PTQ, recomputed from scratch for one (α_W, α_X)."""
    x, w = unit.x.quantize(torch.tensor([alpha_x])), unit.w.quantize(torch.tensor([alpha_w]))
    reference, output = unit.op(unit.x.value, unit.w.value), unit.op(x[0], w[0])
    score = pearson(reference, output.unsqueeze(0))
    if pairs is not None:
        fp_map, quant_map = unit.attention_map, output.softmax(-1)
        score = score - gamma * ranking_loss(fp_map.flatten(-2), quant_map.flatten(-2).unsqueeze(0), theta, pairs)
    return float(score)


def test_ranking_loss_matches_hand_computed_values():
    pairs = element_pairs(3, 10, torch.Generator())
    assert [p.tolist() for p in pairs] == [[0, 0, 1], [1, 2, 2]]  # every pair i < j when few
    fp = torch.tensor([0.1, 0.2, 0.7])
    order_preserving = torch.tensor([0.0, 0.3, 0.9])  # every gap >= theta
    swapped = torch.tensor([0.2, 0.1, 0.7])  # pair (0, 1) inverted
    loss = ranking_loss(fp, torch.stack([order_preserving, swapped, fp]), theta=0.05, pairs=pairs)
    # swapped: (0,1): max(0.05 - (0.2 - 0.1)·sign(0.1 - 0.2), 0) = 0.15; (0,2), (1,2) keep a gap >= 0.05
    assert loss.tolist() == pytest.approx([0.0, 0.15 / 3, 0.0])
    # a collapsed pair costs the margin; an FP tie carries no order and is left out
    assert ranking_loss(fp, torch.tensor([[0.1, 0.1, 0.7]]), 0.05, pairs).item() == pytest.approx(0.05 / 3)
    tied = torch.tensor([0.3, 0.3, 0.4])  # (0,1) left out; (0,2): 0.05 - 0.03 = 0.02; (1,2): gap 0.08
    assert ranking_loss(tied, torch.tensor([[0.35, 0.3, 0.38]]), 0.05, pairs).item() == pytest.approx(0.02 / 2)


def test_ranking_loss_over_heads_and_sampled_pairs():
    generator = torch.Generator().manual_seed(0)
    first, second = element_pairs(64, 100, generator)
    assert len(first) == 100 and bool((first < second).all()) and int(second.max()) < 64
    fp = torch.rand(2, 3, 64, generator=generator)  # (images, heads, N²)
    shuffled = fp[..., torch.randperm(64, generator=generator)]
    loss = ranking_loss(fp, torch.stack([fp * 2, shuffled]), 0.0, (first, second))
    assert loss[0] == 0 and loss[1] > 0  # any monotone map of the scores keeps every order


def test_grid_always_holds_the_min_max_scale():
    for low, high, num in [(0.5, 1.2, 71), (0.5, 1.2, 10), (0.5, 1.2, 2), (0.3, 1.0, 7)]:
        grid = candidate_grid(low, high, num)
        assert bool((grid == 1.0).any()) and grid[0] == pytest.approx(low) and grid[-1] == pytest.approx(high)
        assert bool((grid.diff() > 0).all())
    options = RankingOptions()
    assert (options.search_low, options.search_high) == (0.5, 1.2)  # docs/methods.md, Ranking-loss PTQ: α = 0.5, β = 1.2
    with pytest.raises(HarnessError, match=r"search_low=1.1 is out of range; accepted: a value in \(0, 1\]"):
        expand(GridSpec(methods=("ranking",), bits=("w4a4",), calibrator_options={"search_low": 1.1}))


def _linear_unit(bits: int = 3, act_bits: int = 3) -> tuple[MatmulUnit, QuantLinear]:
    generator = torch.Generator().manual_seed(0)
    layer = QuantLinear.from_float(torch.nn.Linear(32, 16), bits)
    x = torch.randn(64, 32, generator=generator)
    x[0, 0] = 25.0  # an outlier makes the min-max range a poor choice
    unit = MatmulUnit("fc", activation_operand(ActQuantizer(act_bits), x), weight_operand(layer),
                      lambda x, w: torch.nn.functional.linear(x, w, layer.bias))
    return unit, layer


def test_search_never_ends_worse_than_min_max():
    grid = candidate_grid(0.5, 1.2, 15)
    unit, layer = _linear_unit()
    result = alternating_search(unit, grid, rounds=3, gamma=0.0, theta=0.0, pairs=None)
    assert result.objective_minmax == pytest.approx(_objective(unit, 1.0, 1.0), abs=1e-6)
    assert result.objective == pytest.approx(_objective(unit, result.alpha_w, result.alpha_x), abs=1e-6)
    assert result.objective > result.objective_minmax and result.alpha_x < 1.0  # the outlier gets clipped
    for alpha_w, alpha_x in itertools.product(grid.tolist(), repeat=2):
        if alpha_w == result.alpha_w or alpha_x == result.alpha_x:  # no single-axis move improves it
            assert _objective(unit, alpha_w, alpha_x) <= result.objective + 1e-6


def test_search_keeps_min_max_when_nothing_beats_it():
    grid = candidate_grid(0.5, 1.2, 15)
    value = torch.tensor([[0.0, 1.0, 2.0, 3.0]])  # exactly representable at 2 bits with the min-max scale
    identity = Operand(torch.eye(4), lambda alphas: torch.eye(4).expand(len(alphas), 4, 4), lambda a: None, False)
    unit = MatmulUnit("exact", activation_operand(ActQuantizer(2), value), identity, lambda x, w: x @ w)
    result = alternating_search(unit, grid, rounds=2, gamma=1.0, theta=0.0, pairs=None)
    assert (result.alpha_w, result.alpha_x) == (1.0, 1.0) and result.objective == pytest.approx(1.0)


def test_attention_search_with_ranking_term_is_never_worse_than_min_max():
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 2, 9, 8, generator=generator), torch.randn(2, 2, 9, 8, generator=generator)
    scores = q @ k.transpose(-2, -1)
    unit = MatmulUnit("attn.q@k", activation_operand(ActQuantizer(3), q), activation_operand(ActQuantizer(3), k),
                      lambda q, k: q @ k.transpose(-2, -1), attention_map=scores.softmax(-1))
    pairs = element_pairs(81, 500, generator)
    result = alternating_search(unit, candidate_grid(0.5, 1.2, 15), 3, gamma=5.0, theta=0.01, pairs=pairs)
    minmax = _objective(unit, 1.0, 1.0, 5.0, 0.01, pairs)
    assert result.objective_minmax == pytest.approx(minmax, abs=1e-5)
    assert _objective(unit, result.alpha_w, result.alpha_x, 5.0, 0.01, pairs) >= minmax - 1e-6


def test_bias_correction_zeroes_the_mean_output_error(tiny_vit):
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    inputs = []
    handle = tiny_vit.blocks[1].mlp.fc1.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    with torch.no_grad():
        tiny_vit(images)
    handle.remove()
    x, fp_layer = torch.cat(inputs), tiny_vit.blocks[1].mlp.fc1
    errors = {}
    for corrected in (False, True):
        qmodel, info = _calibrated(tiny_vit, images, "w4a3", options=RankingOptions(bias_correction=corrected, **QUICK))
        with torch.no_grad():
            errors[corrected] = (qmodel.blocks[1].mlp.fc1(x) - fp_layer(x)).mean(dim=(0, 1))
    assert info["bias_corrected_layers"] == 10  # patch embedding + 4 Linears x 2 blocks + head
    assert errors[False].abs().max() > 1e-3
    assert errors[True].abs().max() < 1e-5


def test_allocation_meets_the_budget_and_follows_the_nuclear_norm():
    sizes = dict.fromkeys("abcd", 100)
    allocation = allocate_bits({"a": 1.0, "b": 4.0, "c": 2.0, "d": 3.0}, sizes, 6, (4, 6, 8))
    assert allocation == {"a": 4, "b": 8, "c": 4, "d": 8} and average_bits(allocation, sizes) == 6.0
    generator = torch.Generator().manual_seed(0)
    for budget in (5, 6, 7):  # the DP is the exact optimum: compare with brute force
        sigma = {str(i): float(s) for i, s in enumerate(torch.rand(6, generator=generator))}
        sizes = {str(i): int(n) for i, n in enumerate(torch.randint(1, 50, (6,), generator=generator) * 64)}
        allocation = allocate_bits(sigma, sizes, budget, (4, 6, 8))
        feasible = [dict(zip(sigma, bits)) for bits in itertools.product((4, 6, 8), repeat=6)
                    if average_bits(dict(zip(sigma, bits)), sizes) <= budget]
        best = max(sum(sigma[n] * a[n] for n in sigma) for a in feasible)
        assert average_bits(allocation, sizes) <= budget
        assert sum(sigma[n] * allocation[n] for n in sigma) == pytest.approx(best)
    with pytest.raises(HarnessError, match="below the smallest"):
        allocate_bits({"a": 1.0}, {"a": 10}, 3, (4, 6, 8))


def test_mixed_precision_end_to_end_reports_and_applies_the_allocation(tiny_vit):
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    qmodel, info = _calibrated(tiny_vit, images, "mp6")
    mixed = info["mixed_precision"]
    layers = dict(qmodel.named_modules())
    assert mixed["choices"] == [4, 6, 8] and mixed["budget"] == 6 and mixed["weighting"] == "parameter count"
    assert mixed["average_bits"] <= 6 and set(mixed["allocation"].values()) <= {4, 6, 8}
    assert {name: layers[name].weight_bits for name in mixed["allocation"]} == mixed["allocation"]
    sigma, bits = mixed["sensitivity"], mixed["allocation"]
    assert sigma["blocks.0.attn.qkv"] == sigma["blocks.0.attn.proj"]  # the attention map's nuclear norm
    same_size = ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]
    for a, b in itertools.permutations(same_size, 2):
        if sigma[a] > sigma[b]:
            assert bits[a] >= bits[b]
    assert len(set(bits.values())) > 1


@pytest.mark.parametrize("profile", ["standard", "psaq"])
@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_end_to_end_freezes_everything_and_leaves_the_fp_model_untouched(fixture, profile, request):
    model = request.getfixturevalue(fixture)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    state, classes = copy.deepcopy(model.state_dict()), [type(m) for m in model.modules()]
    with torch.no_grad():
        fp_logits = model(images)
    qmodel = quantize_model(model, parse_bits("w4a4"), QuantConfig(profile=profile))
    keys = set(qmodel.state_dict())
    info = RankingCalibrator(RankingOptions(**QUICK)).calibrate(qmodel, _context(model, images))
    assert all(q.frozen for _, q in act_quantizers(qmodel))
    assert set(qmodel.state_dict()) == keys  # captures leave no probe behind
    assert [type(m) for m in model.modules()] == classes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(images), fp_logits)
    for layer in info["layers"].values():
        assert 0.5 <= layer["alpha_w"] <= 1.2 and 0.5 <= layer["alpha_x"] <= 1.2
        assert layer["objective"] >= layer["objective_minmax"] - 1e-6
    if profile == "standard":
        assert info["minmax_quantizers"] == []  # every quantizer is a matmul input, all searched
        assert any(name.endswith("q@k") for name in info["layers"])
    else:
        assert info["minmax_quantizers"] and not any(name.endswith("q@k") for name in info["layers"])
    assert {"minmax", "capture", "search", "bias_correction"} <= set(info["timing_s"])


def test_ranking_beats_min_max_at_low_bits(tiny_vit):
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp_logits = tiny_vit(images)
        ranking = _calibrated(tiny_vit, images, "w4a3")[0](images)
        qmodel = quantize_model(tiny_vit, parse_bits("w4a3"), QuantConfig())
        MinMaxCalibrator().calibrate(qmodel, _context(tiny_vit, images, "w4a3"))
        minmax = qmodel(images)
    assert (ranking - fp_logits).pow(2).mean() < (minmax - fp_logits).pow(2).mean()


def test_methods_and_mixed_precision_are_registered():
    assert (METHODS.get("ranking").generator, METHODS.get("ranking").calibrator) == ("real", "ranking")
    assert (METHODS.get("ranking_dfq").generator, METHODS.get("ranking_dfq").calibrator) == ("psaq", "ranking")
    assert CALIBRATORS.get("ranking").supports_mixed_precision
    cells = expand(GridSpec(methods=("ranking",), bits=("mp6",), calibrator_options={"bit_choices": [4, 8]}))
    assert cells and cells[0].calibrator_options.bit_choices == (4, 8)
    assert cells[0].config()["options"]["calibrator"]["theta"] == RankingOptions().theta
