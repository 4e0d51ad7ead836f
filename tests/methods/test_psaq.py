import copy
import json
import math

import pytest
import torch
from PIL import Image

from harness.errors import HarnessError
from harness.plugin.method import GenerationContext
from harness.plugin.options import build_options
from harness.plugin.registry import GENERATORS, METHODS
from harness.plugin.task import ImagePrior
from harness.run.grid import GridSpec
from harness.run.runner import GridRunner
from methods.psaq.export import main as export_main
from methods.psaq.generator import PSAQOptions, PatchSimilarityGenerator

PRIOR = ImagePrior(input_size=(3, 32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_classes=10)
FAST = dict(num_images=3, batch_size=2, iterations=3, warmup=1, roll_ranges=(2, 4))


def _generate(model, seed, prior=PRIOR, **options):
    generator = PatchSimilarityGenerator(PSAQOptions(**{**FAST, **options}))
    return generator.generate(GenerationContext(task=None, model_name="tiny", model=model, prior=prior, seed=seed,
                                                device=torch.device("cpu")))


def _frozen(model):
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def test_registered_with_spec_defaults():
    assert GENERATORS.get("psaq") is PatchSimilarityGenerator
    assert (METHODS.get("psaq").generator, METHODS.get("psaq").calibrator) == ("psaq", "minmax")
    options = PSAQOptions()
    assert (options.num_images, options.batch_size, options.iterations, options.warmup) == (32, 32, 500, 100)
    assert options.roll_ranges == (15, 30) and options.flip_probability == 0.5 and options.lr is None
    assert (options.betas, options.eps) == ((0.5, 0.9), 1e-8)
    assert (options.pse_weight, options.oh_weight, options.tv_weight) == (1.0, 1.0, 0.05)
    assert options.tv_target_range == (2500.0, 3000.0) and options.tv_scaling == "sqrt"
    assert (options.bandwidth, options.kde_points, options.entropy_offset) == (0.01, 10, 1e-4)


def test_options_from_the_command_line_are_normalized_and_checked():
    options = build_options(PSAQOptions, {"psaq.roll_ranges": [1, 2, 3], "noise.num_images": 8}, "psaq", "psaq")
    assert options.roll_ranges == (1, 2, 3) and options.num_images == 32
    for bad in ({"warmup": 600}, {"roll_ranges": []}, {"lr": 0}, {"flip_probability": 2}):
        with pytest.raises(HarnessError):
            build_options(PSAQOptions, bad, "psaq", "psaq")


def test_generation_is_seeded_finite_clamped_and_shaped(tiny_vit):
    model = _frozen(tiny_vit)
    first, again, other = _generate(model, 0), _generate(model, 0), _generate(model, 1)
    assert first.images.shape == (3, 3, 32, 32) and first.labels.shape == (3,)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.allclose(first.images, other.images)
    assert torch.isfinite(first.images).all()
    low, high = PRIOR.clamp_bounds()
    assert (first.images >= low - 1e-6).all() and (first.images <= high + 1e-6).all()
    assert first.labels.min() >= 0 and first.labels.max() < 10
    assert first.info["lr"] == pytest.approx(0.20) and len(first.info["batches"]) == 2  # batches of 2 and 1
    scale = math.sqrt(3 * 32 * 32 / (32 * 3 * 224 * 224))  # v scaled by sqrt(B·C·H·W / (32·3·224·224))
    assert 2500 * math.sqrt(2) * scale <= first.info["batches"][0]["tv_target"] <= 3000 * math.sqrt(2) * scale
    assert 2500 * scale <= first.info["batches"][1]["tv_target"] <= 3000 * scale


def test_fp_model_is_left_unchanged(tiny_vit):
    model = _frozen(tiny_vit)
    modules = [(name, type(module)) for name, module in model.named_modules()]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    _generate(model, 0)
    assert [(name, type(module)) for name, module in model.named_modules()] == modules
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert not model.training and not any(p.requires_grad or p.grad is not None for p in model.parameters())


def test_swin_gets_its_own_lr(tiny_swin):
    swin = _generate(_frozen(tiny_swin), 0, iterations=1, warmup=0, num_images=2)
    assert swin.info["lr"] == pytest.approx(0.25) and swin.images.shape == (2, 3, 32, 32)
    explicit = _generate(_frozen(tiny_swin), 0, iterations=1, warmup=0, num_images=2, lr=0.1)
    assert explicit.info["lr"] == pytest.approx(0.1)


def test_a_backbone_without_classes_gets_no_labels_and_no_one_hot_term(tiny_vit):
    """README, Tasks: on a detection/segmentation backbone the prior has no classes; PSE and TV remain."""
    backbone = copy.deepcopy(tiny_vit)
    backbone.reset_classifier(0)
    prior = ImagePrior(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    result = _generate(_frozen(backbone), 0, prior=prior, num_images=2, iterations=3, warmup=1)
    assert result.labels is None and result.info["one_hot_term"] is False
    assert set(result.info["batches"][0]["final_loss"]) == {"pse", "tv"}
    with_classes = _generate(_frozen(copy.deepcopy(tiny_vit)), 0, num_images=2, iterations=3, warmup=1)
    assert set(with_classes.info["batches"][0]["final_loss"]) == {"pse", "tv", "oh"}


def test_optimization_raises_entropy_and_fits_labels_without_jitter(tiny_vit):
    """With the jitter off, 40 iterations must move both the PSE and the one-hot loss down."""
    result = _generate(_frozen(tiny_vit), 0, num_images=4, batch_size=4, iterations=20, warmup=2,
                       roll_ranges=(0, 0), flip_probability=0.0, tv_weight=0.0)
    start = _generate(_frozen(tiny_vit), 0, num_images=4, batch_size=4, iterations=1, warmup=0,
                      roll_ranges=(0,), flip_probability=0.0, tv_weight=0.0)
    final, initial = result.info["batches"][0]["final_loss"], start.info["batches"][0]["final_loss"]
    assert final["pse"] < initial["pse"] and final["oh"] < initial["oh"]


def test_runner_caches_psaq_images_and_export_writes_a_grid(tmp_path):
    spec = GridSpec(methods=("psaq",), bits=("w8a8", "w4a4"), models=("digits_vit_seed0",), limit=50,
                    generator_options={"num_images": 4, "iterations": 2, "warmup": 1})
    summary = GridRunner(tmp_path).run(spec)
    assert summary.failed == 0 and summary.computed == 2
    records = [json.loads(p.read_text()) for p in (tmp_path / "records").glob("*.json")]
    assert sorted(r["generator_cache_hit"] for r in records) == [False, True]
    assert all(r["calibration_info"]["lr"] == pytest.approx(0.20) for r in records)
    (entry,) = (tmp_path / "cache" / "generators" / "psaq").glob("*.safetensors")
    out = tmp_path / "grid.png"
    assert export_main([str(entry), str(out), "--nrow", "2", "--scale", "2"]) == 0
    with Image.open(out) as image:  # 2 x 2 tiles of 32 px plus torchvision's 2 px padding
        assert image.size == (2 * (32 + 2) + 2, 2 * (32 + 2) + 2)


def test_pse_weight_zero_ablates_the_prior(tiny_vit):
    """With every term weighted 0 nothing moves the pixels; the PSE term alone moves them."""
    still = _generate(_frozen(tiny_vit), 0, num_images=2, iterations=3, warmup=1, pse_weight=0.0, oh_weight=0.0,
                      tv_weight=0.0)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    low, high = PRIOR.clamp_bounds()
    assert torch.equal(still.images, noise.clamp(low, high))
    moved = _generate(_frozen(tiny_vit), 0, num_images=2, iterations=3, warmup=1, oh_weight=0.0, tv_weight=0.0)
    assert not torch.equal(moved.images, still.images)
