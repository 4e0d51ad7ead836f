"""The ``aphq`` and ``fimaq`` pieces against APHQ-ViT's and FIMA-Q's own code (docs/methods.md, APHQ-ViT and FIMA-Q,
Parity).

The fixtures in ``fixtures/aphq_parity/`` were written (on AVX2 kernels, one thread, torch 2.14) by

    python benchmarks/aphq_fimaq_parity.py --aphq APHQ_CHECKOUT --fimaq FIMAQ_CHECKOUT \\
        --write-fixtures tests/harness/fixtures/aphq_parity

with APHQ_CHECKOUT a clone of github.com/GoatWu/APHQ-ViT at 84c9fde5fbdf9fc85561ab7c0898b75c8e5ec381 and
FIMAQ_CHECKOUT one of github.com/ShiheWang/FIMA-Q at 64c4b00a368d7cbbea635cb26bc7f3ab56fb1b26 (also in the JSON
files). The script took the random-init ``deit_small_config`` DeiT (seed 0) and its 8 smooth random calibration and
4 evaluation images from ``fixtures/repq_parity/deit_small_config`` (checked equal to what it generates; the digest
is in the JSON file), ran the authors' wrapping, calibration search, block reconstruction and (APHQ-ViT) MLP
reconstruction on it in float64 (shims for CUDA, the data loader, their float32 percentiles, module creation in
float64 and the installed timm's attention call, listed in the script), with eq_n 32 and 2 search rounds, one
batch of 8, and recorded (parameters as runs [value, count]):

- after calibration at W4A4 and W3A3, with APHQ-ViT's configuration and FIMA-Q's (per-token activation scales):
  every quantized layer's weight and activation parameters in call order and the logits of 4 more images (and,
  in ``swin_small_config``, the same at W4A4 on the small Swin);
- their objectives (the perturbation Hessian loss, the Fisher DPLR loss, MSE, the head's KL divergence) on fixed
  tensors: the value and the gradient with respect to the prediction at the second call (the first sets the
  normalizer); the mean perturbation Hessians and the Fisher terms they gathered for each unit;
- 10 steps of block reconstruction of every unit (W4A4) with their random draws seeded per unit, each step's
  loss, and the logits afterwards; 10 steps of APHQ-ViT's MLP reconstruction per block (losses, clip bound,
  normalized Hessian) and the logits afterwards.

The harness reaches these in about 5 s on one thread.
"""
from __future__ import annotations

import copy
import functools
import hashlib
from pathlib import Path

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from calibration import calibrate
from harness.model.instrument import get_point
from harness.quant.bits import parse_bits
from harness.quant.capture import LAYER_INPUT, Target, capture, floating_point
from harness.quant.convert import QuantConfig, quantize_model
from harness.quant.objectives import LogitDivergence
from harness.quant.reconstruction import (FisherDPLR, LogitKL, OutputMSE, PerturbationHessian, ReconstructionContext,
                                          ReconstructionSettings, positive_percentile, reconstruct, reconstruct_mlps,
                                          relu_mlps)
from methods.aphq_vit.calibrator import APHQCalibrator, APHQOptions
from methods.fima_q.calibrator import FIMAQCalibrator, FIMAQOptions
from parity_fixtures import load_fixture

FIXTURE = Path(__file__).parent / "fixtures" / "aphq_parity" / "deit_small_config"
SWIN = FIXTURE.with_name("swin_small_config")
META, TENSORS = load_fixture(FIXTURE)
# the weights and images: RepQ-ViT's fixture of the same seed-0 model (the script checked they are equal)
SHARED = Path(__file__).parents[2] / META["weights_and_images"]["fixture"]
_, SHARED_TENSORS = load_fixture(SHARED)
IMAGES = SHARED_TENSORS["calibration_images"].double()
EVALUATION = SHARED_TENSORS["evaluation_images"].double()
# Tolerances. Step losses: float64 arithmetic in another order (another kernel or thread count) moves values by
# ulps; 10 Adam steps keep that far below 1e-9 (3e-13 and 9e-12 measured on generic kernels). The perturbation
# Hessians: the ±1e-6 shift is constant over a token's channels, which every following LayerNorm removes, so both
# gradients are the gradient at the FP model against its own softmax, which is 0 but for rounding (|g| ~ 1e-18
# here): their difference is rounding noise, at most |g+| + |g-| < 1e-17 (up to 4e-22 on AVX2 kernels, 9e-20 on
# generic ones). It is equal to the bit only with the kernels and the thread count the fixture was made with
# (recorded in it: AVX2, 1 thread), so the step tests put the authors' Hessians in place of the harness's. The
# tests run on one thread: these tiny float64 models are several times faster so on a loaded machine.
STEP_RTOL = 1e-9
HESSIAN_NOISE = 1e-17


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _fixture_kernels() -> bool:
    here = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    return here == (META["cpu_capability"], META["threads"])


SIZES = dict(calib_size=8, optim_size=8, search_candidates=META["eq_n"], search_rounds=META["search_round"],
             search_batch=8, batch_size=META["batch"])


def _model() -> torch.nn.Module:
    model = VisionTransformer(**META["kwargs"]).eval()
    model.load_state_dict({k.removeprefix("weights."): v for k, v in SHARED_TENSORS.items()
                           if k.startswith("weights.")})
    return model.double()


def _options(method: str, **extra):
    if method == "aphq":
        return APHQCalibrator(APHQOptions(**SIZES, mlp_reconstruction=False, iterations=0, **extra))
    return FIMAQCalibrator(FIMAQOptions(**SIZES, iterations=0, **extra))


@functools.lru_cache(maxsize=None)
def _calibrated(method: str, bits: str) -> torch.nn.Module:
    return calibrate(_model(), bits, _options(method), IMAGES, batch_size=8)[0]


def _layer_params(qmodel: torch.nn.Module, name: str) -> dict:
    """The harness's parameters of the authors' layer ``name`` (matmul1: q and k, matmul2: attention and v)."""
    if name.endswith(("matmul1", "matmul2")):
        attention = qmodel.get_submodule(name.rsplit(".", 1)[0])
        points = ("q", "k") if name.endswith("matmul1") else ("attn", "v")
        return {"activations": [get_point(attention, p) for p in points]}
    layer = qmodel.get_submodule(name)
    return {"weight": (layer.weight_scale, layer.weight_zero_point), "activations": [get_point(layer, "in")]}


def _close(ours: torch.Tensor, theirs: list[list[float]], rtol: float, what: str) -> float:
    """Largest relative gap to the authors' values, stored as runs [value, count]."""
    reference = torch.tensor([value for value, count in theirs for _ in range(int(count))], dtype=torch.float64)
    ours = ours.detach().reshape(-1).to(torch.float64)
    if ours.numel() != reference.numel():  # a parameter repeated per token on one side (FIMA-Q's zero points)
        small, large = sorted((ours, reference), key=torch.Tensor.numel)
        assert large.numel() % small.numel() == 0, what
        large = large.reshape(small.numel(), -1)
        spread = small[:, None].expand_as(large)
        ours, reference = (spread, large) if small is ours else (large, spread)
    gap = ((ours - reference).abs() / reference.abs().clamp_min(1e-300)).max().item()
    assert gap <= rtol, f"{what}: relative gap {gap:.3g}"
    return gap


@pytest.mark.parametrize("bits", ["w4a4", "w3a3"])
@pytest.mark.parametrize("method", ["aphq", "fimaq"])
def test_calibration_matches_the_authors(method, bits):
    """(a) Every searched parameter in call order, then the logits of 4 images."""
    qmodel = _calibrated(method, bits)
    calls = META["quantizers_in_call_order"][f"{method}_{bits}"]
    assert len(calls) == 14  # patch embedding, 2 x (qkv, matmul1, matmul2, proj, fc1, fc2), head
    _check_calls(qmodel, calls)
    with torch.no_grad():
        logits = qmodel(EVALUATION)
    torch.testing.assert_close(logits, TENSORS[f"{method}_{bits}_logits"], rtol=0, atol=1e-12)


def _check_calls(qmodel: torch.nn.Module, calls: list[dict]) -> None:
    """Searched parameters equal to 1e-12 relative (float64 in another order: ulps) and zero points equal."""
    for call in calls:
        ours = _layer_params(qmodel, call["name"])
        if "weight" in call:
            _close(ours["weight"][0], call["weight"]["scale"], 1e-12, f"{call['name']} weight scale")
            _close(ours["weight"][1], call["weight"]["zero_point"], 0, f"{call['name']} weight zero point")
        if call["name"] == "patch_embed.proj":  # their convolution passes its 8-bit input through unquantized
            assert ours["activations"] == [None]
            continue
        for quantizer, theirs in zip(ours["activations"], call["activations"]):
            _close(quantizer.scale, theirs["scale"], 1e-12, f"{call['name']} scale")
            _close(quantizer.zero_point, theirs["zero_point"], 1e-12, f"{call['name']} zero point")


@pytest.mark.parametrize("method", ["aphq", "fimaq"])
def test_swin_calibration_matches_the_authors(method):
    """(a) on the small Swin (shifted windows, patch mergings: the reduction's per-channel search folded into
    its norm), W4A4."""
    meta, tensors = load_fixture(SWIN)
    shared = load_fixture(Path(__file__).parents[2] / meta["weights_and_images"]["fixture"])[1]
    model = SwinTransformer(**meta["kwargs"]).eval()
    model.load_state_dict({k.removeprefix("weights."): v for k, v in shared.items() if k.startswith("weights.")})
    count = meta["calibration_images"]
    images = shared["calibration_images"][:count].double()
    calibrator = (APHQCalibrator(APHQOptions(**{**SIZES, "calib_size": count, "search_batch": count},
                                             mlp_reconstruction=False, iterations=0)) if method == "aphq"
                  else FIMAQCalibrator(FIMAQOptions(**{**SIZES, "calib_size": count, "search_batch": count},
                                                    iterations=0)))
    qmodel = calibrate(model.double(), "w4a4", calibrator, images, batch_size=count)[0]
    calls = meta["quantizers_in_call_order"][f"{method}_w4a4"]
    assert len(calls) == 40  # patch embedding, 6 blocks x 6, 2 reductions, head
    _check_calls(qmodel, calls)
    with torch.no_grad():
        logits = qmodel(shared["evaluation_images"].double())
    torch.testing.assert_close(logits, tensors[f"{method}_w4a4_logits"], rtol=0, atol=1e-12)


def test_the_shared_weights_and_images_are_the_ones_the_fixtures_were_made_with():
    for meta in (META, load_fixture(SWIN)[0]):
        shared = Path(__file__).parents[2] / meta["weights_and_images"]["fixture"]
        digest = hashlib.sha256(shared.with_suffix(".safetensors").read_bytes()).hexdigest()
        assert digest == meta["weights_and_images"]["sha256"]


def _objective_case(loss, first: torch.Tensor, second: torch.Tensor, target: torch.Tensor,
                    refresh: bool = False) -> tuple[float, torch.Tensor]:
    """The second call's value and gradient with respect to the prediction (the first sets the normalizer)."""
    if refresh:
        loss.refreshed = True
    loss(first, target)
    if refresh:
        loss.refreshed = False
    second = second.clone().requires_grad_()
    value = loss(second, target)
    value.backward()
    return value.item(), second.grad


def _objectives() -> dict[str, tuple]:
    t = {k.removeprefix("objective."): v for k, v in TENSORS.items() if k.startswith("objective.")}
    hessian = PerturbationHessian()
    hessian.hessian = t["hessian"]
    fisher = FisherDPLR(rank=3)
    fisher.grads = t["fisher_grad"]
    fisher.inverse = torch.linalg.inv(t["fisher_delta"] @ t["fisher_delta"].t())
    tokens, logits = (t["pred0"], t["pred1"], t["target"]), (t["logits0"], t["logits1"], t["logits_target"])
    return {"aphq_hessian_perturb": (hessian, tokens), "aphq_mse": (OutputMSE(2.0), tokens),
            "aphq_kl_div": (LogitKL(2.0), logits), "fimaq_fisher_dplr": (fisher, tokens),
            "fimaq_mse": (OutputMSE(1.0), tokens), "fimaq_kl_div": (LogitKL(None), logits)}


@pytest.mark.parametrize("case", ["aphq_hessian_perturb", "aphq_mse", "aphq_kl_div", "fimaq_fisher_dplr",
                                  "fimaq_mse", "fimaq_kl_div"])
def test_objectives_match_the_authors_loss_functions(case):
    """(b) Value and gradient, float64 sums of at most 80 terms: equal to a few ulps."""
    loss, (first, second, target) = _objectives()[case]
    value, grad = _objective_case(loss, first, second, target, refresh=isinstance(loss, FisherDPLR))
    assert value == pytest.approx(META["objective_values"][case], rel=1e-13, abs=0)
    torch.testing.assert_close(grad, TENSORS[f"objective.{case}_grad"], rtol=1e-12, atol=1e-15)


def _reconstructed(method: str, monkeypatch) -> tuple[torch.nn.Module, dict, list]:
    """10 steps of block reconstruction of every unit after W4A4 calibration, each step's loss recorded. APHQ-ViT:
    every unit's perturbation Hessian is the one the authors' code gathered (module docstring: it is rounding
    noise), after the harness's own is kept for the comparison."""
    model = _model()
    qmodel = copy.deepcopy(_calibrated(method, "w4a4"))
    losses: dict[str, list[float]] = {}
    objectives = []
    prepare = PerturbationHessian.prepare

    def authors_hessian(self, unit, context):
        prepare(self, unit, context)
        self.own = self.hessian
        self.hessian = TENSORS[f"aphq_{unit.name}.hessian"]

    monkeypatch.setattr(PerturbationHessian, "prepare", authors_hessian)

    def objective(unit):
        if unit.is_head:
            loss = LogitKL(2.0 if method == "aphq" else None)
        elif method == "aphq":
            loss = PerturbationHessian()
        else:
            loss = FisherDPLR(5, 1.0, 1.0)
        objectives.append((unit.name, loss))
        return loss

    settings = ReconstructionSettings(iterations=META["steps"], batch_size=META["batch"], drop_prob=0.5,
                                      temperature=20.0)
    reconstruct(qmodel, model, IMAGES, torch.device("cpu"), objective, settings, META["seed"], 8,
                on_step=lambda name, step, value: losses.setdefault(name, []).append(value))
    return qmodel, losses, objectives


@pytest.mark.parametrize("method", ["aphq", "fimaq"])
def test_block_reconstruction_steps_match_the_authors(method, monkeypatch):
    """(c) Each unit's step losses with the same random draws, the gathered Hessians / Fisher terms, and the
    logits after 10 steps of every unit."""
    if torch.__version__.split("+")[0].rsplit(".", 1)[0] != META["torch"].split("+")[0].rsplit(".", 1)[0]:
        # Measured on torch 2.11: QDrop's masks come out of the same generator in another order there, so every
        # masked step differs (losses by 2.8e-4 (aphq) and 1.0e-3 (fimaq) relative): the same draws are the
        # premise of this comparison, which holds on the fixture's torch release.
        pytest.skip(f"QDrop's random masks are drawn in another order on torch {torch.__version__} than on the "
                    f"fixture's {META['torch']}")
    qmodel, losses, objectives = _reconstructed(method, monkeypatch)
    theirs = META["block_steps"][f"{method}_w4a4"]
    assert list(losses) == list(theirs)
    for name in theirs:
        torch.testing.assert_close(torch.tensor(losses[name]), torch.tensor(theirs[name]), rtol=STEP_RTOL, atol=0,
                                   msg=lambda m: f"{name}: {m}")
    found = dict(objectives)
    if method == "aphq":
        for name in ("patch_embed", "blocks.0", "blocks.1"):
            ours, reference = found[name].own, TENSORS[f"aphq_{name}.hessian"]
            if _fixture_kernels():
                torch.testing.assert_close(ours, reference, rtol=0, atol=0)
            else:  # both rounding noise of a gradient that is 0 in exact arithmetic (module docstring)
                assert max(ours.abs().max().item(), reference.abs().max().item()) < HESSIAN_NOISE
    else:
        torch.testing.assert_close(found["blocks.0"].grads, TENSORS["fimaq_blocks.0.fisher_grad"], rtol=1e-9,
                                   atol=1e-20)
        torch.testing.assert_close(found["blocks.0"].deltas, TENSORS["fimaq_blocks.0.fisher_delta"], rtol=1e-9,
                                   atol=1e-20)
    with torch.no_grad():
        logits = qmodel(EVALUATION)
    torch.testing.assert_close(logits, TENSORS[f"{method}_w4a4_reconstructed_logits"], rtol=0, atol=1e-10)


def test_mlp_reconstruction_steps_match_the_authors(monkeypatch):
    """(d) APHQ-ViT's MLP reconstruction (ReLU): each block's clip bound, Hessian and step losses, and the FP
    (ReLU) model's logits after 10 steps per block."""
    model = _model()
    qmodel = quantize_model(model, parse_bits("w4a4"), QuantConfig()).double()
    relu_mlps(qmodel)
    losses: dict[str, list[float]] = {}
    # the authors' (normalized) Hessians in place of the harness's pair of gradients, whose difference is
    # rounding noise (module docstring): theirs minus zero, once per block, and the normalization leaves it
    hessians = [TENSORS[f"aphq_mlp_{name}.hessian"] for name in META["mlp_steps"]["aphq_w4a4"]]
    pairs = iter([(h, torch.zeros_like(h))[i] for h in hessians for i in (0, 1)])
    gradients = ReconstructionContext.output_gradients

    own = []

    def authors_gradients(self, module, model_, shift):
        own.append(gradients(self, module, model_, shift))  # the harness's own, kept
        return next(pairs)

    monkeypatch.setattr(ReconstructionContext, "output_gradients", authors_gradients)
    with floating_point(qmodel):
        reconstruct_mlps(qmodel, model, IMAGES, torch.device("cpu"), META["steps"], META["batch"], 4e-5, 0.98, LogitDivergence(20.0),
                         2.0, torch.Generator().manual_seed(META["seed"]), 8,
                         on_step=lambda name, step, value: losses.setdefault(name, []).append(value))
        with torch.no_grad():
            logits = qmodel(EVALUATION)
    theirs = META["mlp_steps"]["aphq_w4a4"]
    assert list(losses) == list(theirs)
    for name in theirs:
        torch.testing.assert_close(torch.tensor(losses[name]), torch.tensor(theirs[name]["losses"]), rtol=STEP_RTOL,
                                   atol=0, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(logits, TENSORS["aphq_mlp_reconstructed_logits"], rtol=0, atol=1e-12)
    for index, name in enumerate(theirs):
        fp_inputs = capture(model, IMAGES, {"x": Target(model.get_submodule(name).mlp.fc2, LAYER_INPUT)},
                            torch.device("cpu"), 8)["x"]
        assert positive_percentile(fp_inputs, 0.98) == theirs[name]["bound"], name
        if _fixture_kernels():  # normalized rounding noise elsewhere (STEP_RTOL's comment)
            hessian = (own[2 * index] - own[2 * index + 1]).abs().mean(dim=0, keepdim=True)
            hessian = hessian * torch.sqrt(hessian.numel() / hessian.pow(2).sum())
            torch.testing.assert_close(hessian, hessians[index], rtol=0, atol=0)
