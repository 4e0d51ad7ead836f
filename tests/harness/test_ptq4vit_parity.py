"""The ``ptq4vit`` calibrator against PTQ4ViT's own code (docs/methods.md, PTQ4ViT, Parity).

The fixtures in ``fixtures/ptq4vit_parity/`` were written by

    python benchmarks/ptq4vit_parity.py --authors CHECKOUT --write-fixtures tests/harness/fixtures/ptq4vit_parity

with CHECKOUT a clone of github.com/hahnyuan/PTQ4ViT at commit b42c790c2811e7835d435a9f9a6c64a079a7483a
(also in the JSON file, with the torch version and CPU capability). The script built a random-init timm
``VisionTransformer`` (seed 0) at a small DeiT configuration, ran the authors' ``get_net``,
``wrap_modules_in_net`` with ``configs/PTQ4ViT.py`` and ``HessianQuantCalibrator(sequential=False,
batch_size=4).batching_quant_calib()`` on it in float64 with 32 smooth random calibration images (shims
for the pretrained-weight download, CUDA calls and the installed timm's attention signature, listed in
the script), and recorded the logits of 4 more images at W8A8, W6A6 and W4A4 and every searched scale.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from harness.bits import parse_bits
from harness.instrument import get_point
from harness.method import CalibrationContext, CalibrationSet
from harness.quant.convert import QuantConfig, quantize_model
from methods.ptq4vit.calibrator import PTQ4ViTCalibrator

FIXTURE = Path(__file__).parent / "fixtures" / "ptq4vit_parity" / "deit_small_config"
META = json.loads(FIXTURE.with_suffix(".json").read_text())
# Exact on the fixture machine's kernels. Elsewhere (another reduction order in float64) the gradients
# that weight the Hessian metric, which are rounding noise in the authors' setting (docs/methods.md,
# PTQ4ViT), come out different, and so do most searched scales: on torch's generic kernels 22-24 of the
# 27 scales move, by factors 0.44-1.66, and the logits by 1.5 % (W8A8), 6.7 % (W6A6) and 20 % (W4A4) of
# their largest magnitude, argmax unchanged. Held to those bounds, with margin, elsewhere.
EXACT = torch.backends.cpu.get_cpu_capability() == META["cpu_capability"]
LOGIT_BOUND = {"w8a8": 0.05, "w6a6": 0.15, "w4a4": 0.3}  # fraction of the largest reference logit
SCALE_FACTOR = 2.5  # elsewhere each scale within this factor of the authors'
BITS = list(META["authors_scales"])


@lru_cache(maxsize=None)
def _calibrated(bits: str) -> tuple[torch.nn.Module, dict]:
    tensors = load_file(str(FIXTURE.with_suffix(".safetensors")))
    model = VisionTransformer(**META["kwargs"]).eval()
    model.load_state_dict({k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")})
    model.double()
    spec = parse_bits(bits)
    qmodel = quantize_model(model, spec, QuantConfig()).double()
    PTQ4ViTCalibrator().calibrate(qmodel, CalibrationContext(
        fp_model=model, calibration=CalibrationSet(tensors["calibration_images"].double()), bits=spec, seed=0,
        device=torch.device("cpu")))
    return qmodel, tensors


def _scales(qmodel: torch.nn.Module) -> dict[str, list[float]]:
    """The harness's searched scales under the authors' names (as benchmarks/ptq4vit_parity.py pairs them)."""
    scales = {}
    for name, module in qmodel.named_modules():
        if getattr(module, "weight_bits", None):
            blocks = 3 if name.endswith("qkv") else (module.weight.shape[0] if module.weight.dim() == 4 else 1)
            scales[f"{name}.weight"] = module.weight_scale.reshape(-1)[::module.weight.shape[0] // blocks].tolist()
            if get_point(module, "in") is not None:
                scales[f"{name}.input"] = get_point(module, "in").scale.reshape(-1).tolist()
        if hasattr(module, "qkv") and get_point(module, "q") is not None:
            scales[f"{name}.matmul1.A"] = (get_point(module, "q").scale / module.scale).reshape(-1).tolist()
            scales[f"{name}.matmul1.B"] = get_point(module, "k").scale.reshape(-1).tolist()
            scales[f"{name}.matmul2.A"] = get_point(module, "attn").scale.reshape(-1).tolist()
            scales[f"{name}.matmul2.B"] = get_point(module, "v").scale.reshape(-1).tolist()
    return scales


@pytest.mark.parametrize("bits", BITS)
def test_same_quantized_logits_as_the_authors(bits):
    qmodel, tensors = _calibrated(bits)
    with torch.no_grad():
        logits = qmodel(tensors["evaluation_images"].double())
    reference = tensors[f"authors_logits_{bits}"]
    tolerance = 1e-12 if EXACT else LOGIT_BOUND[bits] * reference.abs().max().item()
    torch.testing.assert_close(logits, reference, rtol=0, atol=tolerance)
    if EXACT:
        assert torch.equal(logits.argmax(1), reference.argmax(1))


@pytest.mark.parametrize("bits", BITS)
def test_same_searched_scales_as_the_authors(bits):
    qmodel, _ = _calibrated(bits)
    ours, theirs = _scales(qmodel), META["authors_scales"][bits]
    assert set(ours) == set(theirs) and len(theirs) == 27
    differing = [key for key in theirs if ours[key] != pytest.approx(theirs[key], rel=1e-12, abs=0)]
    if EXACT:
        assert not differing
    else:
        for key in differing:
            assert all(1 / SCALE_FACTOR <= a / b <= SCALE_FACTOR for a, b in zip(ours[key], theirs[key])), key
