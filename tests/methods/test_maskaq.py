"""MaskAQ parity against the authors' code (tests/harness/fixtures/maskaq_parity, made by
benchmarks/maskaq_parity.py from hfutqian/MaskAQ at 3245400; docs/methods.md, MaskAQ, Parity).

Everything runs in float64 on the fixture's 28 px DeiT (14 x 14 patches, 2 blocks, 2 heads of 16 channels).
Tolerances: the harness and the authors' code evaluate the same formulas with operations reordered (a mean
over a 14 x 14 map or over 196 values, a batched matmul or a broadcast product, a stacked mean or a running
sum), each reordering off by a few units of float64's 2^-53 relative, and through two blocks, softmax and the
quantizers' straight-through paths the losses stay within ~1e-14 relative of each other. A rounding boundary
could turn such an ulp into a whole quantization step; none is crossed on these inputs (then the differences
would be 1e-2 or more, not 1e-12). So values are checked at 1e-11 relative (a few thousand ulps), gradients
at 1e-9 of their largest entry (they add cancelling contributions of many paths).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import methods.maskaq  # noqa: F401  (registers the plugins)
from harness.model.instrument import attach_point
from harness.plugin.task import ImagePrior
from harness.plugin.tuner import epoch_cosine
from harness.quant.bits import parse_bits
from harness.quant.calibrate import observe_and_freeze
from harness.quant.convert import QuantConfig, quantize_model
from harness.quant.learned_offset import LearnedOffsetQuantizer, MinMaxWeightSTE, learned_offset_quantizers, minmax_weights_ste
from harness.quant.observers import MinMaxObserver
from methods.maskaq.generator import MaskAqOptions, StepDraws, loss_terms, pixel_adamw, synthesis_step
from methods.maskaq.losses import drop_tokens, informative_mask
from methods.maskaq.tuner import MaskAqTunerOptions, tuning_losses

FIXTURES = Path(__file__).resolve().parents[1] / "harness" / "fixtures" / "maskaq_parity"
VALUE_RTOL = 1e-11
GRADIENT_RTOL = 1e-9
PRIOR = ImagePrior(input_size=(3, 28, 28), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_classes=1000)
WEIGHTS = {"similarity": 1.0, "class": 1.0, "tv": 2.5e-5, "alignment": 0.1, "entropy": 1.0}
AUTHORS_TERM = {"similarity": "ssim", "class": "class", "tv": "tv", "alignment": "att_diff", "entropy": "entropy"}
# the authors' activation quantizers by the harness point they sit at (suffix after "blocks.i.")
AUTHORS_POINT = {"attn.qkv.quant_act": "attn.qkv.dfq_points.in", "attn.proj.quant_act": "attn.proj.dfq_points.in",
                 "attn.matmul1.quant_act1": "attn.dfq_points.q", "attn.matmul1.quant_act2": "attn.dfq_points.k",
                 "attn.matmul2.quant_act1": "attn.dfq_points.attn", "attn.matmul2.quant_act2": "attn.dfq_points.v",
                 "mlp.fc1.quant_act": "mlp.fc1.dfq_points.in", "mlp.fc2.quant_act": "mlp.fc2.dfq_points.in"}


@pytest.fixture(scope="module")
def fixture():
    meta = json.loads((FIXTURES / "deit_28px.json").read_text())
    return meta, load_file(str(FIXTURES / "deit_28px.safetensors"))


def fp_model(meta, tensors) -> nn.Module:
    model = VisionTransformer(**meta["kwargs"]).eval()
    model.load_state_dict({k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")})
    return model.double()


@contextlib.contextmanager
def student(meta, tensors, label: str) -> Iterator[tuple[nn.Module, nn.Module]]:
    """The FP model and its quantized copy in the authors' state after their LSQ start on ``lsq_init_images``:
    learned-offset quantizers with their step, offset, signedness and g; the image input in FP, as theirs;
    q quantized before the 1/sqrt(d) factor, as theirs; weights min-max with a straight-through gradient."""
    model = fp_model(meta, tensors)
    qmodel = quantize_model(model, parse_bits(label), QuantConfig())
    observe_and_freeze(qmodel, tensors["lsq_init_images"], lambda _: MinMaxObserver(), torch.device("cpu"))
    for module in qmodel.modules():
        if hasattr(module, "scale_after_product"):
            module.scale_after_product = True
    swapped = learned_offset_quantizers(qmodel)
    states = {entry["name"]: entry for entry in meta["bits"][label]["lsq_quantizers_after_init"]}
    for name, entry in states.items():
        if entry["full_precision"]:
            assert name == "patch_embed.proj.quant_act"
            attach_point(qmodel.patch_embed.proj, "in", nn.Identity())
            swapped.pop("patch_embed.proj.dfq_points.in")
            continue
        if name == "head.quant_act":
            point = "head.dfq_points.in"
        else:
            block, suffix = name.split(".", 2)[:2], name.split(".", 2)[2]
            point = ".".join(block) + "." + AUTHORS_POINT[suffix]
        quantizer = swapped.pop(point)
        quantizer.signed, quantizer.initialized, quantizer.g = bool(entry["signed"]), True, entry["g_scale"]
        quantizer.alpha.data = torch.tensor(entry["alpha"], dtype=torch.float64)
        quantizer.offset.data = torch.tensor(entry["zero_point"], dtype=torch.float64)
    assert not swapped, f"harness quantizers without an authors' counterpart: {sorted(swapped)}"
    with minmax_weights_ste(qmodel):
        yield model, qmodel


def close(actual: torch.Tensor | float, expected: torch.Tensor | float, rtol: float) -> float:
    """Asserts |actual - expected| <= rtol·max|expected| (elementwise, relative to the largest entry); returns the
    max abs difference for the docs' parity table."""
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    difference = (actual - expected).abs().max().item()
    bound = rtol * max(expected.abs().max().item(), 1e-300)
    assert difference <= bound, f"max abs difference {difference:.3g} > {bound:.3g}"
    return difference


def recorded_draws(tensors, prefix: str, step: int | None, shift=(0, 0)) -> StepDraws:
    def at(name):
        value = tensors[f"{prefix}{name}"]
        return value if step is None else value[step]
    rows = at("entropy_rows")
    none = torch.zeros(()), torch.ones(())
    return StepDraws(shift=tuple(shift), noise=at("noise") if step is not None else none[0],
                     jitter_mean=at("jitter_mean") if step is not None else none[0],
                     jitter_std=at("jitter_std") if step is not None else none[1],
                     drop=lambda mask: at("mask_dropped"),
                     rows=lambda layers, images, patches: rows.view(layers, images, -1))


@pytest.mark.parametrize("label", ["w4a4", "w4a8"])
def test_generator_terms_and_gradients(fixture, label):
    meta, tensors = fixture
    with student(meta, tensors, label) as (model, qmodel):
        expected = meta["bits"][label]["generator_terms"]["values"]
        images = tensors["generator_images"].clone().requires_grad_(True)
        draws = recorded_draws(tensors, f"{label}.generator.", None)
        terms, mask = loss_terms(model, qmodel, images, tensors["generator_labels"], draws, 0.5, prefix=1)
        terms["total"] = sum(WEIGHTS[name] * term for name, term in terms.items())
        for name, term in terms.items():
            authors = AUTHORS_TERM.get(name, name)
            close(term.item(), expected[authors], VALUE_RTOL)
            key = f"{label}.generator.grad_{authors}"
            if key in tensors:
                gradient, = torch.autograd.grad(term, [images], retain_graph=True)
                close(gradient, tensors[key], GRADIENT_RTOL)
        assert torch.equal(mask, tensors[f"{label}.generator.mask_topk"])


def test_mask_before_and_after_the_drop(fixture):
    """The top-k mask from the FP logits, and the drop with the authors' draws (their global generator seeded 1
    gives the same randperm stream as a generator seeded 1)."""
    meta, tensors = fixture
    rows = tensors["w4a4.generator.fp_cls_attention_logits"]  # (L, B, P): class row, heads averaged
    layers, batch, patches = rows.shape
    recorded = torch.zeros(layers, batch, 1, patches + 1, patches + 1, dtype=rows.dtype)
    recorded[:, :, 0, 0, 1:] = rows  # one head whose class row is the recorded one
    mask = informative_mask(list(recorded), 0.5, prefix=1)
    assert torch.equal(mask, tensors["w4a4.generator.mask_topk"])
    assert int(mask.sum(1)[0]) == int(196 * 0.5)
    for label in ("w4a4", "w4a8"):
        dropped = drop_tokens(tensors[f"{label}.generator.mask_topk"], 0.3, torch.Generator().manual_seed(1))
        assert torch.equal(dropped, tensors[f"{label}.generator.mask_dropped"])
    assert int(dropped.sum(1)[0]) == round(98 * 0.7)


def test_one_synthesis_step(fixture):
    """Their ``generate`` for one iteration with its recorded draws: the terms and the pixels after AdamW + clamp."""
    meta, tensors = fixture
    with student(meta, tensors, "w4a4") as (model, qmodel):
        synthesis = meta["bits"]["w4a4"]["synthesis"]
        options = MaskAqOptions(iterations=synthesis["iterations"], batch_size=synthesis["batch"])
        images = tensors["synthesis.initial_images"].clone().requires_grad_(True)
        optimizer, schedule = pixel_adamw(images, options)
        mean, std = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) for v in (PRIOR.mean, PRIOR.std))
        bounds = (-mean / std, (1 - mean) / std)  # in float64, as theirs (the prior's own are float32)
        draws = recorded_draws(tensors, "synthesis.", 0, synthesis["roll_shifts"][0])
        terms, total = synthesis_step(model, qmodel, images, tensors["synthesis.labels"], draws, 0.5, 1, WEIGHTS,
                                      optimizer, schedule, bounds)
        for name, term in terms.items():
            close(term.item(), synthesis["terms_per_step"][0][AUTHORS_TERM[name]], VALUE_RTOL)
        close(total.item(), synthesis["terms_per_step"][0]["total"], VALUE_RTOL)
        close(images.detach(), tensors["synthesis.images_after_step1"], VALUE_RTOL)


@pytest.mark.parametrize("label", ["w4a4", "w4a8"])
def test_one_fine_tuning_step(fixture, label):
    """KD and head-output distance of their first stepping epoch on the recorded augmented batch, the student's
    logits, every parameter's gradient, and the lr of that epoch."""
    meta, tensors = fixture
    with student(meta, tensors, label) as (model, qmodel):
        expected = meta["bits"][label]["tuning_step"]
        prefix = f"{label}.tuning."
        options = MaskAqTunerOptions()
        terms = tuning_losses(model, qmodel, tensors[f"{prefix}augmented_images"], options, prefix=1)
        close(terms["kd"].item(), expected["kd_loss"], VALUE_RTOL)
        close(terms["head"].item(), expected["head_dist_loss"], VALUE_RTOL)
        loss = options.kd_weight * terms["kd"] + options.head_weight * terms["head"]
        close(loss.item(), expected["total_loss"], VALUE_RTOL)
        with torch.no_grad():
            close(qmodel(tensors[f"{prefix}augmented_images"]), tensors[f"{prefix}student_logits"], VALUE_RTOL)
        loss.backward()
        gradients = {name.replace("parametrizations.weight.original", "weight"): p.grad
                     for name, p in qmodel.named_parameters() if p.grad is not None}
        authors = {key[len(f"{prefix}grad."):]: value for key, value in tensors.items() if key.startswith(f"{prefix}grad.")}
        compared = 0
        for name, gradient in authors.items():
            if ".quant_act" in name or name.startswith("patch_embed.proj.quant"):
                continue  # the quantizers' own parameters: compared below by their harness names
            if name not in gradients:
                continue
            close(gradients[name].float().double(), gradient.double(), 1e-6)  # stored in float32: 2^-24 relative
            compared += 1
        assert compared >= 20
        assert options.lr * epoch_cosine(2, options.epochs, options.min_lr_ratio) == pytest.approx(expected["lr_used"], rel=1e-12)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("kind", ["signed", "unsigned"])
@pytest.mark.parametrize("gamma", [1.0, 0.01])
def test_learned_offset_quantizer(bits, kind, gamma):
    """Their ``QuantAct_lsq``: the lazy start, then two calls' outputs and input, step and offset gradients."""
    meta = json.loads((FIXTURES / "lsq_quantizers.json").read_text())
    tensors = load_file(str(FIXTURES / "lsq_quantizers.safetensors"))
    case = meta["cases"][f"act_{kind}_b{bits}_g{gamma}"]
    quantizer = LearnedOffsetQuantizer(bits, gamma).double()
    for call in ("init", "later"):
        x = tensors[f"quant.act_{kind}_init_input" if call == "init" else f"quant.act_{kind}_input"].clone()
        x.requires_grad_(True)
        quantizer.zero_grad()
        output = quantizer(x)
        (output * tensors["quant.upstream"]).sum().backward()
        if call == "init":
            assert quantizer.signed == bool(case["signed"])
            close(quantizer.alpha.item(), case["alpha_init"], 1e-15)
            close(quantizer.offset.item(), case["zero_point_init"], 1e-15)
            close(quantizer.g, case["g_scale"], 1e-15)
        close(output, tensors[f"quant.act_{kind}_b{bits}_g{gamma}.{call}.output"], 1e-15)
        close(x.grad, tensors[f"quant.act_{kind}_b{bits}_g{gamma}.{call}.grad_input"], 1e-15)
        close(quantizer.alpha.grad.item(), case[call]["grad_alpha"], 1e-12)
        close(quantizer.offset.grad.item(), case[call]["grad_zero_point"], 1e-12)


@pytest.mark.parametrize("bits", [4, 8])
def test_minmax_weight_straight_through(bits):
    """Their default weight quantizer (per output row, min-max, identity gradient): output and gradient."""
    tensors = load_file(str(FIXTURES / "lsq_quantizers.safetensors"))
    weight = tensors["quant.weight"].clone().requires_grad_(True)
    output = MinMaxWeightSTE(bits)(weight)
    (output * tensors["quant.upstream_weight"]).sum().backward()
    close(output, tensors[f"quant.weight_minmax_b{bits}.output"], 1e-15)
    assert torch.equal(weight.grad, tensors[f"quant.weight_minmax_b{bits}.grad_input"])


def test_restored_quantizers_compute_what_was_learned(fixture):
    """After fine-tuning the learned grids go back into the harness's frozen quantizers: same outputs."""
    from harness.quant.learned_offset import restore_quantizers
    meta, tensors = fixture
    model = fp_model(meta, tensors)
    qmodel = quantize_model(model, parse_bits("w4a4"), QuantConfig()).double()  # float64 buffers: an exact round trip
    images = tensors["lsq_init_images"]
    observe_and_freeze(qmodel, images, lambda _: MinMaxObserver(), torch.device("cpu"))
    swapped = learned_offset_quantizers(qmodel)
    with torch.no_grad():
        qmodel(images)  # LSQ's start
        for quantizer in swapped.values():
            quantizer.offset.add_(0.37)  # an offset off the integers, as training leaves it
        learned = qmodel(images)
        restore_quantizers(swapped)
        close(qmodel(images), learned, 1e-12)
