"""The ``adalog`` calibrator against AdaLog's own code (docs/methods.md, AdaLog, Parity), and its quantizer.

The fixtures in ``fixtures/adalog_parity/`` were written by

    python benchmarks/adalog_parity.py --authors CHECKOUT --authors-commit 75a57d2515521bb1711159ea229d1a37665f3fed \
        --write-fixtures tests/harness/fixtures/adalog_parity --bits w4a4,w3a3 --search-rounds 1 --steps 2
    python benchmarks/adalog_parity.py --authors CHECKOUT --authors-commit 75a57d2515521bb1711159ea229d1a37665f3fed \
        --write-fixtures tests/harness/fixtures/adalog_parity --models deit_small_config --bits w4a4 \
        --calib-images 4 --fixture-suffix _default_search

with CHECKOUT a ``git archive`` of github.com/GoatWu/AdaLog at that commit (also in the JSON files): for each
small configuration of ``parity_kit.SMALL_FIXTURES`` the authors' ``test_quant.py`` ``main()`` calibrated a
random-init timm model (seed 0) in float64 on smooth random images (shims listed in the script), and the
fixture holds the logits of 4 more images and every quantizer's parameters in calibration order. Float64 for
the reason ``test_psaq_parity.py`` gives.

``deit_small_config`` and ``swin_small_config`` (8 images, W4A4 and W3A3) search one round of two FPCS steps
on both sides, so their tests take seconds (Swin: about 28 s each on a quiet 2-core machine, marked slow).
Their refinement is a single step, which keeps the best candidate only; ``deit_small_config_default_search``
(4 images, W4A4) runs the authors' default, 3 rounds of 6 steps, and so also reaches the refinement steps that
keep the 16 (32) best and the later rounds, which score weights against an input quantizer searched on the
output error.

Measured bounds: on the kernels the fixtures were written with (AVX2) logits and parameters are identical.
With ``ATEN_CPU_CAPABILITY=default`` (generic kernels) every search picks the same candidates: all parameters
of all five cases identical, logits within 1.7e-16 (DeiT's; Swin's identical). Both are held
on every machine: logits to 1e-12, parameters to a relative 1e-12. Other kernels (AVX-512) were not
measured; should a search flip there between two near-equal candidates, measure the difference and hold it
per fixture, as ``test_repq_parity.py`` does.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark
from harness.quant.adalog import (ADALOG_R, GELU_SHIFT, candidate_batch, dequantization_tables, fake_quant_adalog,
                                  progressive_search, search_table)
from methods.adalog.calibrator import AdaLogCalibrator
from methods.adalog.layers import LinearSearch, MatMulSearch, Search
from parity_fixtures import calibrated_on_fixture, load_fixture

FIXTURES = Path(__file__).parent / "fixtures" / "adalog_parity"
CASES = [("deit_small_config", "w4a4"), ("deit_small_config", "w3a3"), ("deit_small_config_default_search", "w4a4")]
SLOW_CASES = [("swin_small_config", "w4a4"), ("swin_small_config", "w3a3")]


@functools.lru_cache(maxsize=None)
def _calibrated(config: str, bits: str):
    meta, tensors = load_fixture(FIXTURES / config)
    options = AdaLogCalibrator.Options(search_rounds=meta["search_rounds"], steps=meta["steps"])
    qmodel = calibrated_on_fixture(meta, tensors, bits, AdaLogCalibrator(options))
    with torch.no_grad():
        logits = qmodel(tensors["evaluation_images"].double())
    return qmodel, meta, tensors, logits


# the measured bounds of the module docstring, on AVX2 (the fixtures' kernels) and generic kernels alike
LOGITS_ATOL = 1e-12
PARAMETERS_RTOL = 1e-12


def _check(config: str, bits: str) -> None:
    qmodel, meta, tensors, logits = _calibrated(config, bits)
    reference = tensors[f"authors_logits_{bits}"]
    torch.testing.assert_close(logits, reference, rtol=0, atol=LOGITS_ATOL)
    ours = load_benchmark("adalog_parity").harness_parameters(qmodel)
    theirs = meta["parameters_in_calibration_order"][bits]
    assert len(ours) == len(theirs)
    for o, t in zip(ours, theirs):
        assert set(o) == set(t), (o["name"], t["name"])
        for key in t:
            if key != "name":
                torch.testing.assert_close(torch.tensor(o[key], dtype=torch.float64),
                                           torch.tensor(t[key], dtype=torch.float64),
                                           rtol=PARAMETERS_RTOL, atol=0,
                                           msg=lambda m: f"{o['name']} {key}: {m}")


@pytest.mark.parametrize(("config", "bits"), CASES)
def test_same_logits_and_parameters_as_the_authors(config, bits):
    _check(config, bits)


@pytest.mark.slow
@pytest.mark.parametrize(("config", "bits"), SLOW_CASES)
def test_same_logits_and_parameters_as_the_authors_on_swin(config, bits):
    """Swin's window attention (relative position bias, shifted windows' mask) and patch merging, whose
    reduction has no bias until the LayerNorm fold gives it one."""
    _check(config, bits)


@pytest.mark.parametrize("bits", [3, 4, 6])
@pytest.mark.parametrize("base", [10, 37, 53, 137])
def test_table_dequantization_is_the_rounded_power(bits, base):
    """Codes dequantize to 2^(-floor(c·q/r)) · round(2^(-((c·q) mod r)/r) · (2^(b+1) - 2)) / (2^(b+1) - 2) · s,
    which is 2^(-c·q/r) · s within half a mantissa step, and the search's table agrees with the tables."""
    steps = 2 ** (bits + 1) - 2
    exponents, mantissas = dequantization_tables(base, bits)
    scale = torch.tensor(0.75, dtype=torch.float64)
    codes = torch.arange(2 ** bits, dtype=torch.float64)
    x = scale * 2 ** (-codes * base / ADALOG_R)  # exactly on the levels
    ours = fake_quant_adalog(x, scale, torch.tensor(base), torch.zeros((), dtype=torch.float64), bits)
    for c in range(2 ** bits):
        assert exponents[c] == math.floor(c * base / ADALOG_R)
        if x[c] < 1e-14:  # below the clamp (1e-15 before the logarithm): another code
            continue
        expected = 2.0 ** -exponents[c] * (round(2 ** (-((base * c) % ADALOG_R) / ADALOG_R) * steps) / steps) * 0.75
        assert ours[c].item() == pytest.approx(expected, rel=1e-15)
        assert abs(ours[c].item() - x[c].item()) <= 2.0 ** -exponents[c] * 0.75 / steps / 2 + 1e-15
    table = search_table(bits, torch.float64, torch.device("cpu"))
    columns = [int((c * base) % ADALOG_R) for c in range(2 ** bits)]
    torch.testing.assert_close(table[columns], torch.tensor(mantissas, dtype=torch.float64), rtol=1e-15, atol=0)


def test_values_beyond_the_last_code_are_zero_and_the_top_is_the_scale():
    scale, base = torch.tensor(0.5, dtype=torch.float64), torch.tensor(37)
    x = torch.tensor([0.5, 0.9, 1e-9, 0.0], dtype=torch.float64)
    out = fake_quant_adalog(x, scale, base, torch.zeros((), dtype=torch.float64), 4)
    assert out[0].item() == 0.5 and out[1].item() == 0.5  # clamped to the scale
    assert out[2].item() == 0 and out[3].item() == 0  # codes of 2^4 and above


def test_shift_is_folded_into_the_bias():
    """fc2's quantizer adds GELU's shift and does not subtract it; the bias carries W_q · (-shift): the Linear's
    output equals quantizing x + shift, subtracting the shift, then the unfolded Linear."""
    from methods.adalog.calibrator import _fold_shift
    from harness.quant.modules import QuantLinear
    torch.manual_seed(0)
    linear = QuantLinear.from_float(torch.nn.Linear(8, 4).double(), 4)
    x = torch.nn.functional.gelu(torch.randn(5, 8, dtype=torch.float64) * 2)
    scale, base, shift = torch.tensor(3.0, dtype=torch.float64), torch.tensor(29), torch.tensor(GELU_SHIFT, dtype=torch.float64)
    unfolded = linear(fake_quant_adalog(x, scale, base, shift, 4) - shift)
    _fold_shift(linear, GELU_SHIFT)
    torch.testing.assert_close(linear(fake_quant_adalog(x, scale, base, shift, 4)), unfolded, rtol=1e-12, atol=1e-12)


def test_progressive_search_refines_around_the_best():
    """On a score peaked at 0.3137, the refinement reaches it far below the first grid's spacing."""
    scales = torch.linspace(0, 1, 128, dtype=torch.float64).reshape(1, -1)
    partners = torch.zeros_like(scales)
    top = lambda s, z, k: torch.topk(-(s - 0.3137).abs(), k=k, dim=-1).indices  # noqa: E731
    best, _ = progressive_search(scales, partners, top, 128, 16, 6, dim=-1)
    assert abs(best.item() - 0.3137) < 1e-5


# --- the branches full-size models reach (docs/methods.md, AdaLog, Large tensors) ---------------------------

def test_candidate_batch_is_the_authors_memory_rule():
    """Candidates per pass: (memory / 2 / 4) // numel, evened out over the passes; at full size with 32 images
    and the 8 GiB default, DeiT-S's qkv scores 7 candidates a pass, its fc2 9, Swin-T's first-stage qkv 1."""
    memory = 8 * 2 ** 30
    for numel in (1, 1000, 2 ** 20, 2 ** 23 + 1, 2 ** 27, 2 ** 29 - 1):
        per_pass = int((memory // 2 / 4) // numel)
        assert candidate_batch(128, memory, numel) == math.ceil(128 / math.ceil(128 / per_pass))
    tokens, width, images = 197, 384, 32
    assert candidate_batch(128, memory, 8 * images * tokens * width + 16 * images * tokens * 3 * width) == 7
    assert candidate_batch(128, memory, 8 * images * tokens * 4 * width + 16 * images * tokens * width) == 9
    assert candidate_batch(128, memory, 8 * images * 3136 * 96 + 16 * images * 3136 * 288) == 1


def _searches(memory: int) -> dict[str, torch.Tensor]:
    """A Linear's uniform search, a post-GELU search and an attention product's, on small float64 tensors."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, 64, generator=generator, dtype=torch.float64)
    weight = torch.randn(96, 64, generator=generator, dtype=torch.float64) * 0.1
    bias = torch.randn(96, generator=generator, dtype=torch.float64) * 0.1
    search = Search(eq_n=128, rounds=1, steps=2, batch_size=2, memory=memory, quantile="published")
    uniform = LinearSearch(weight, bias, x, torch.nn.functional.linear(x, weight, bias), 4, 4, search)
    uniform.calibrate_uniform()
    gelu = torch.nn.functional.gelu(x)
    post_gelu = LinearSearch(weight, bias, gelu, torch.nn.functional.linear(gelu, weight, bias), 4, 4, search)
    post_gelu.calibrate_post_gelu()
    q, k = (torch.randn(4, 2, 50, 16, generator=generator, dtype=torch.float64) for _ in range(2))
    product = MatMulSearch(q, k.transpose(-2, -1), q @ k.transpose(-2, -1), 4, None, True, search)
    product.calibrate()
    return {"passes": torch.tensor([uniform.parallel, post_gelu.parallel, product.parallel]),
            "uniform": torch.cat([uniform.w_scale.reshape(-1), uniform.w_zero_point.reshape(-1),
                                  uniform.a_scale.reshape(-1), uniform.a_zero_point.reshape(-1)]),
            "post_gelu": torch.cat([post_gelu.w_scale.reshape(-1), post_gelu.a_scale.reshape(-1),
                                    post_gelu.log_base.reshape(-1).double()]),
            "product": torch.cat([p.reshape(-1) for pair in product.params.values() for p in pair])}


def test_the_search_chooses_alike_in_one_pass_or_in_many():
    """Full-size layers score their candidates over several passes (above): memory small enough to force
    5 candidates a pass on these tensors chooses the same parameters as one pass of all 128."""
    one, many = _searches(8 * 2 ** 30), _searches(8 * 204_800 * 5)
    assert one["passes"].tolist() == [128, 128, 128] and many["passes"].max() < 128
    for key in ("uniform", "post_gelu", "product"):
        torch.testing.assert_close(many[key], one[key], rtol=1e-12, atol=0, msg=key)


def _authors_split_quantiles(x: torch.Tensor, groups: int, limit: int) -> torch.Tensor:
    """The authors' per-tensor rule restated: view the rows as 1, 2, 4, ... equal parts until torch.quantile
    (refusing rows above ``limit`` values, as torch <= 2.13 above 2^24) accepts them; average the parts."""
    pct = torch.tensor([0.9, 1.0, 0.1, 0.0], dtype=x.dtype)
    parts = 1
    while True:
        try:
            rows = x.reshape(groups, -1).view(groups, parts, -1)
            if rows.shape[-1] > limit:
                raise RuntimeError("quantile() input tensor is too large")
            return torch.quantile(rows, pct, dim=-1).mean(dim=-1)
        except RuntimeError:
            parts *= 2


@pytest.mark.parametrize(("count", "groups"), [(3000, 1), (6000, 2), (1000, 1)])
def test_rows_above_the_quantile_limit_are_split_and_averaged(monkeypatch, count, groups):
    """Above torch <= 2.13's limit (2^24 values a row; 1000 here) the ``published`` quantiles average 2, 4, ...
    equal parts as the authors' fallback does; ``torch2.14`` keeps the rows whole; no split that ends: an error."""
    import harness.quant.adalog as adalog
    monkeypatch.setattr(adalog, "PUBLISHED_QUANTILE_LIMIT", 1000)
    x = torch.randn(count, generator=torch.Generator().manual_seed(count), dtype=torch.float64)
    uppers, lowers = adalog.tensor_percentiles(x, groups, "published")
    torch.testing.assert_close(torch.cat([uppers, lowers]), _authors_split_quantiles(x, groups, 1000),
                               rtol=1e-15, atol=0)
    uppers, lowers = adalog.tensor_percentiles(x, groups, "torch2.14")
    torch.testing.assert_close(torch.cat([uppers, lowers]), _authors_split_quantiles(x, groups, count),
                               rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="2\\^k equal parts"):
        adalog.tensor_percentiles(torch.zeros(3006, dtype=torch.float64), 1, "published")
