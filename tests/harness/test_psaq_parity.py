"""The ``psaq`` profile against PSAQ-ViT's own code (docs/quantizer.md, The `psaq` placement).

The fixtures in ``fixtures/psaq_parity/`` were written by

    python benchmarks/psaq_parity.py --authors CHECKOUT --write-fixtures tests/harness/fixtures/psaq_parity

with CHECKOUT a clone of github.com/zkkli/PSAQ-ViT at commit d2c726fe33d6dd474a5f2e2e88d36a354c9d7a7d
(also recorded in each JSON file). The script built a random-init timm model (seed 0) at a small
configuration of DeiT (``VisionTransformer``) and of Swin (``SwinTransformer``), loaded its weights into
the authors' ``models/vit_quant.py`` / ``models/swin_quant.py`` model of the same configuration,
converted both to float64, calibrated the authors' model as their ``test_quant.py`` does (one FP
forward of the 4 calibration images, then ``model_quant()``) and evaluated 4 more images at W8A8 and
W4A8. ``NAME.safetensors`` holds the float32 timm weights (``weights.*``), both image sets (smooth
random images) and the authors' float64 logits; ``NAME.json`` the configuration, the authors' commit
and every authors' quantizer range under the name of the harness quantizer it pairs with (paired by
call order).

Float64, because these tests must pass on any CPU: in float32 a CPU whose matmuls round differently
from the one that wrote the fixtures moves a few of the ~10^5 quantized values across a rounding
boundary, and one such step shifts logits by ~1e-3. In float64 rounding differences are ~1e-16, so
no value comes near a boundary they could move it across. The float32 rounding order is tested
exactly in ``test_fake_quant.py``; float32 parity of full-size DeiT-T and Swin-T is what the benchmark
measures (docs/quantizer.md, Parity with the authors' code).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.plugin.calibrators import MinMaxCalibrator
from harness.quant.convert import QuantConfig
from harness.quant.modules import act_quantizers
from parity_fixtures import calibrated_on_fixture, load_fixture

FIXTURES = Path(__file__).parent / "fixtures" / "psaq_parity"
CASES = [(name, bits) for name in ("deit_small_config", "swin_small_config") for bits in ("w8a8", "w4a8")]


def _calibrated(name: str, bits: str) -> tuple[torch.nn.Module, dict, dict]:
    meta, tensors = load_fixture(FIXTURES / name)
    return calibrated_on_fixture(meta, tensors, bits, MinMaxCalibrator(), QuantConfig(profile="psaq")), meta, tensors


@pytest.mark.parametrize("name, bits", CASES)
def test_same_quantizers_and_ranges_as_the_authors(name, bits):
    qmodel, meta, _ = _calibrated(name, bits)
    ranges = meta["ranges"][bits]
    quantizers = dict(act_quantizers(qmodel))
    assert set(quantizers) == set(ranges)
    for harness_name, (authors_name, low, high) in ranges.items():
        observed = torch.stack([quantizers[harness_name].low, quantizers[harness_name].high])
        torch.testing.assert_close(observed, torch.tensor([low, high], dtype=torch.float64), rtol=1e-9, atol=1e-12,
                                   msg=lambda m: f"{harness_name} (authors' {authors_name}): {m}")


@pytest.mark.parametrize("name, bits", CASES)
def test_same_quantized_logits_as_the_authors(name, bits):
    qmodel, _, tensors = _calibrated(name, bits)
    with torch.no_grad():
        logits = qmodel(tensors["evaluation_images"].double())
    torch.testing.assert_close(logits, tensors[f"authors_logits_{bits}"], rtol=0, atol=1e-9)
