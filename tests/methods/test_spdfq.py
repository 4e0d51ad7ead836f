import json
import math

import pytest
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.plugin.method import GenerationContext
from harness.plugin.options import build_options
from harness.plugin.registry import GENERATORS, METHODS, TASKS
from harness.plugin.task import ImagePrior
from harness.run.grid import GridSpec
from harness.run.runner import GridRunner
from methods.spdfq.generator import SPDFQGenerator, SPDFQOptions
from methods.spdfq.semantics import crop_and_resize, msr_regions, soft_cross_entropy, soft_targets

torch.set_num_threads(1)
PRIOR = ImagePrior(input_size=(3, 32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_classes=10)
FAST = dict(num_images=3, batch_size=2, iterations=3, warmup=1)


def _generate(model, seed=0, prior=PRIOR, **options):
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    generator = SPDFQGenerator(SPDFQOptions(**{**FAST, **options}))
    return generator.generate(GenerationContext(task=None, model_name="tiny", model=model, prior=prior, seed=seed,
                                                device=torch.device("cpu")))


def test_registered_with_spec_defaults_and_switchable_parts():
    assert GENERATORS.get("spdfq") is SPDFQGenerator
    assert (METHODS.get("spdfq").generator, METHODS.get("spdfq").calibrator) == ("spdfq", "block_recon")
    assert (METHODS.get("spdfq_minmax").generator, METHODS.get("spdfq_minmax").calibrator) == ("spdfq", "minmax")
    options = SPDFQOptions()
    assert (options.apa, options.msr, options.sl) == (True, True, True)
    assert (options.num_images, options.batch_size, options.iterations, options.tv_weight) == (32, 32, 1000, 0.05)
    assert (options.num_modes, options.msr_max_patches, options.target_logit_range) == (5, 4, (5.0, 10.0))
    assert (options.betas, options.lr, options.apa_weight) == ((0.5, 0.9), None, None)
    ablation = build_options(SPDFQOptions, {"spdfq.apa": False, "spdfq.width_range": [0.1, 0.2]}, "spdfq", "spdfq")
    assert not ablation.apa and ablation.msr and ablation.width_range == (0.1, 0.2)
    for bad in ({"warmup": 2000}, {"lr": 0}, {"num_modes": 0}, {"width_range": [0, 1]}):
        with pytest.raises(HarnessError):
            build_options(SPDFQOptions, bad, "spdfq", "spdfq")


def test_msr_crops_do_not_overlap_and_stay_in_the_image():
    generator = torch.Generator().manual_seed(0)
    counts = set()
    for _ in range(50):
        regions = msr_regions(3, 16, 16, 4, generator)
        for image in range(3):
            mine = [r for r in regions if r.image == image]
            counts.add(len(mine))
            covered = torch.zeros(16, 16)
            for r in mine:
                assert r.size >= 4 and 0 <= r.top and r.top + r.size <= 16 and 0 <= r.left and r.left + r.size <= 16
                covered[r.top:r.top + r.size, r.left:r.left + r.size] += 1
            assert covered.max() <= 1  # non-overlapping
    assert counts == {1, 2, 3, 4}  # m in {1..4}


def test_msr_gradient_is_zero_outside_the_chosen_region():
    images = torch.randn(2, 3, 16, 16, requires_grad=True)
    regions = msr_regions(2, 16, 16, 4, torch.Generator().manual_seed(3))
    crops = crop_and_resize(images, regions)
    assert crops.shape == (len(regions), 3, 16, 16)
    crops.square().sum().backward()
    inside = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    for r in regions:
        inside[r.image, :, r.top:r.top + r.size, r.left:r.left + r.size] = True
    assert (images.grad[~inside.expand_as(images)] == 0).all()
    assert (images.grad[inside.expand_as(images)] != 0).float().mean() > 0.9


def test_soft_targets_have_the_right_maximum_and_sum_to_one():
    labels = torch.tensor([[3, 7], [0, 9]])
    targets = soft_targets(labels, 10, torch.Generator().manual_seed(0))
    assert targets.shape == (2, 2, 10) and torch.allclose(targets.sum(-1), torch.ones(2, 2))
    assert torch.equal(targets.argmax(-1), labels)
    peak = targets.amax(-1)
    z = torch.log(peak * 9 / (1 - peak))  # peak = e^z / (e^z + 9): recover the drawn logit
    assert ((z > 5 - 1e-4) & (z < 10 + 1e-4)).all()
    others = targets.sort(-1).values[..., :-1]
    assert torch.allclose(others, ((1 - peak) / 9).unsqueeze(-1).expand_as(others), rtol=1e-3)  # Z = 0 elsewhere
    logits = torch.randn(4, 10)
    one_hot = F.one_hot(torch.tensor([1, 2, 3, 4]), 10).float()
    assert soft_cross_entropy(logits, one_hot).item() == pytest.approx(F.cross_entropy(logits, torch.tensor([1, 2, 3, 4])).item())


def test_generation_is_seeded_clamped_and_records_its_parts(tiny_vit):
    first, again, other = _generate(tiny_vit, 0), _generate(tiny_vit, 0), _generate(tiny_vit, 1)
    assert first.images.shape == (3, 3, 32, 32) and first.labels.shape == (3,)
    assert torch.equal(first.images, again.images) and not torch.allclose(first.images, other.images)
    low, high = PRIOR.clamp_bounds()
    assert (first.images >= low - 1e-6).all() and (first.images <= high + 1e-6).all()
    batch = first.info["batches"][0]
    assert set(batch["final_loss"]) == {"ce", "tv", "apa", "msr"} and first.info["lr"] == pytest.approx(0.2)
    assert 1 <= batch["apa_weight"] <= 1e5 and math.log10(batch["apa_weight"]).is_integer()
    assert first.info["batches"][1]["apa_weight"] == batch["apa_weight"]  # one α1 per model


def test_a_backbone_without_classes_is_refused_naming_the_class_source(tiny_vit):
    """The runner gives a class source where the task has one; called directly without classes, spdfq says so."""
    backbone_prior = ImagePrior(input_size=PRIOR.input_size, mean=PRIOR.mean, std=PRIOR.std, num_classes=None)
    with pytest.raises(HarnessError, match=r"spdfq needs class logits .* 'tiny' came without classes; .* source "
                                           r"\(--task-opt prior_classifier=FILE\)$"):
        _generate(tiny_vit, prior=backbone_prior)
    assert SPDFQGenerator().required() == {"classes", "attention"}


@pytest.mark.parametrize("parts", [(False, False, False), (True, False, False), (False, True, False), (False, False, True)])
def test_each_part_switches_its_term(tiny_vit, parts):
    apa, msr, sl = parts
    result = _generate(tiny_vit, apa=apa, msr=msr, sl=sl, num_images=2, iterations=1)
    assert set(result.info["batches"][0]["final_loss"]) == {"ce", "tv"} | ({"apa"} if apa else set()) | ({"msr"} if msr else set())
    assert (result.info["batches"][0]["apa_weight"] is None) != apa


def test_apa_pulls_attention_towards_the_priors():
    """On a trained model (digits): 30 iterations of APA alone cut L_APA several-fold."""
    task = TASKS.get("digits")()
    model, prior = task.load_model("digits_vit_seed0"), task.prior("digits_vit_seed0")
    only_apa = dict(msr=False, sl=False, tv_weight=0.0, num_images=2, batch_size=2, apa_weight=100.0, warmup=0)
    start = _generate(model, prior=prior, iterations=1, **only_apa).info["batches"][0]["final_loss"]["apa"]
    final = _generate(model, prior=prior, iterations=30, **only_apa).info["batches"][0]["final_loss"]["apa"]
    assert final < 0.5 * start


def test_swin_aligns_query_averaged_window_attention(tiny_swin):
    result = _generate(tiny_swin, num_images=2, iterations=2)
    assert result.info["lr"] == pytest.approx(0.25) and result.info["batches"][0]["final_loss"]["apa"] > 0


def test_fp_model_is_left_unchanged(tiny_vit):
    modules = [(name, type(module)) for name, module in tiny_vit.named_modules()]
    state = {key: value.clone() for key, value in tiny_vit.state_dict().items()}
    _generate(tiny_vit)
    assert [(name, type(module)) for name, module in tiny_vit.named_modules()] == modules
    assert all(torch.equal(value, state[key]) for key, value in tiny_vit.state_dict().items())
    assert not tiny_vit.training and not any(p.grad is not None for p in tiny_vit.parameters())


def test_runner_runs_both_methods_on_one_cached_image_set(tmp_path):
    spec = GridSpec(methods=("spdfq", "spdfq_minmax"), bits=("w4a4",), models=("digits_vit_seed0",), limit=50,
                    generator_options=SPDFQGenerator.smoke_options, calibrator_options={"block_recon.iterations": 2})
    summary = GridRunner(tmp_path).run(spec)
    assert summary.failed == 0 and summary.computed == 2
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "records").glob("*.json"))}
    assert sorted(r["generator_cache_hit"] for r in records.values()) == [False, True]
    assert set(records["spdfq"]["calibrator_info"]["block_mse"]) == {f"blocks.{i}" for i in range(4)}
