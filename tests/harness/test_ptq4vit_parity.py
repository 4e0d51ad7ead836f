"""The ``ptq4vit`` calibrator against PTQ4ViT's own code (docs/methods.md, PTQ4ViT, Parity).

The fixtures in ``fixtures/ptq4vit_parity/`` were written by

    python benchmarks/ptq4vit_parity.py --authors CHECKOUT --write-fixtures tests/harness/fixtures/ptq4vit_parity

with CHECKOUT a clone of github.com/hahnyuan/PTQ4ViT at commit b42c790c2811e7835d435a9f9a6c64a079a7483a
(also in the JSON files, with the torch version and CPU capability). For each fixture the script built a
random-init timm model (seed 0) at a small configuration, a ``VisionTransformer`` as DeiT
(``deit_small_config``) and a ``SwinTransformer`` as Swin-T (``swin_small_config``: shifted windows with
the mask, two patch mergings; its classifier a Linear named ``head`` after pooling, as in the timm the
authors wrote for), ran the authors' ``get_net``, ``wrap_modules_in_net`` with ``configs/PTQ4ViT.py`` and
``HessianQuantCalibrator(sequential=False, batch_size=4).batching_quant_calib()`` on it in float64 with
smooth random calibration images (32 for DeiT, 8 for Swin; shims for the pretrained-weight download, CUDA
calls and the installed timm's attention signature, listed in the script), and recorded the logits of 4
more images at W8A8, W6A6 and W4A4 and every searched scale.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark
from methods.ptq4vit.calibrator import PTQ4ViTCalibrator
from parity_fixtures import MODEL_CLASSES, calibrated_on_fixture, load_fixture

FIXTURES = Path(__file__).parent / "fixtures" / "ptq4vit_parity"
# the script that wrote the fixtures: its Swin class, and the harness's scales under the authors' names
PARITY_SCRIPT = load_benchmark("ptq4vit_parity")
CLASSES = {**MODEL_CLASSES, "SwinWithLinearHead": PARITY_SCRIPT.SwinWithLinearHead}
SEARCHED_SCALES = {"deit_small_config": 27, "swin_small_config": 79}
BITS = ["w8a8", "w6a6", "w4a4"]
CASES = [(name, bits) for name in SEARCHED_SCALES for bits in BITS]
# Exact on the fixture machine's kernels. Elsewhere (another reduction order in float64) the gradients
# that weight the Hessian metric, which are rounding noise in the authors' setting (docs/methods.md,
# PTQ4ViT), come out different, and so do most searched scales. Measured on torch's generic and AVX2
# kernels: DeiT, 19-24 of the 27 scales move, by factors 0.44-1.66, the logits by up to 2.1 % (W8A8),
# 8.3 % (W6A6) and 20 % (W4A4) of their largest magnitude; Swin, 52-57 of the 79 scales, by factors
# 0.66-1.44, the logits by up to 1.8 %, 5.4 % and 19 % (and one argmax of 4 at W4A4 on AVX2). Held to
# those bounds, with margin, elsewhere.
LOGIT_BOUND = {"deit_small_config": {"w8a8": 0.05, "w6a6": 0.15, "w4a4": 0.3},  # of the largest reference logit
               "swin_small_config": {"w8a8": 0.05, "w6a6": 0.15, "w4a4": 0.35}}
SCALE_FACTOR = 2.5  # elsewhere each scale within this factor of the authors'


@lru_cache(maxsize=None)
def _fixture(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    return load_fixture(FIXTURES / name)


@lru_cache(maxsize=None)
def _calibrated(name: str, bits: str) -> torch.nn.Module:
    meta, tensors = _fixture(name)
    return calibrated_on_fixture(meta, tensors, bits, PTQ4ViTCalibrator(), model_classes=CLASSES)


def _exact(meta: dict) -> bool:
    return torch.backends.cpu.get_cpu_capability() == meta["cpu_capability"]


@pytest.mark.parametrize("name, bits", CASES)
def test_same_quantized_logits_as_the_authors(name, bits):
    meta, tensors = _fixture(name)
    with torch.no_grad():
        logits = _calibrated(name, bits)(tensors["evaluation_images"].double())
    reference = tensors[f"authors_logits_{bits}"]
    tolerance = 1e-12 if _exact(meta) else LOGIT_BOUND[name][bits] * reference.abs().max().item()
    torch.testing.assert_close(logits, reference, rtol=0, atol=tolerance)
    if _exact(meta):
        assert torch.equal(logits.argmax(1), reference.argmax(1))


@pytest.mark.parametrize("name, bits", CASES)
def test_same_searched_scales_as_the_authors(name, bits):
    meta, _ = _fixture(name)
    ours, theirs = PARITY_SCRIPT.harness_scales(_calibrated(name, bits)), meta["authors_scales"][bits]
    assert set(ours) == set(theirs) and len(theirs) == SEARCHED_SCALES[name]
    differing = [key for key in theirs if ours[key] != pytest.approx(theirs[key], rel=1e-12, abs=0)]
    if _exact(meta):
        assert not differing
    else:
        for key in differing:
            assert all(1 / SCALE_FACTOR <= a / b <= SCALE_FACTOR for a, b in zip(ours[key], theirs[key])), key
