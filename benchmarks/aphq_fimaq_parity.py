"""APHQ-ViT and FIMA-Q reference parity: the authors' classification code on our random-init timm model, written
as fixtures that ``tests/harness/test_aphq_parity.py`` holds the ``aphq`` / ``fimaq`` pieces to (docs/methods.md,
APHQ-ViT and FIMA-Q, Parity).

    python benchmarks/aphq_fimaq_parity.py --aphq /path/to/APHQ-ViT --fimaq /path/to/FIMA-Q \\
        --write-fixtures tests/harness/fixtures/aphq_parity

``--aphq`` is a checkout of github.com/GoatWu/APHQ-ViT (fixtures written at
84c9fde5fbdf9fc85561ab7c0898b75c8e5ec381), ``--fimaq`` one of github.com/ShiheWang/FIMA-Q (at
64c4b00a368d7cbbea635cb26bc7f3ab56fb1b26). Their ``test_quant.py`` is not imported (it creates log folders at
import and reads ImageNet); the pieces its ``main()`` calls are, unchanged, in the same order: ``Config`` from
``configs/{4,3}bit/best.py`` (sizes made small, below), ``wrap_modules_in_net``, ``QuantCalibrator
.batching_quant_calib``, ``wrap_reparamed_modules_in_net``, ``BlockReconstructor.reconstruct_model`` and (APHQ-ViT)
``MLPReconstructor.reconstruct_model``; their ``LossFunction`` classes directly for the objectives. Nothing of
theirs is copied. The shims, and why:

- during the calibration search ``torch.cuda.is_available`` returns True and ``torch.cuda.get_device_properties``
  a device of 1 TiB (only there: torch's optimizers would then look for a driver): their searches refuse to run
  without CUDA and size their candidate chunks from the GPU's memory (1 TiB: every
  candidate in one chunk, as the harness's chunking does at these sizes); ``Tensor.cuda`` returns the tensor
  itself (everything stays on the CPU, in float64);
- ``torch.quantile`` casts a float32 ``q`` to the input's dtype: their ``torch.tensor([l, r])`` percentiles are
  float32 and torch refuses float32 ``q`` for float64 input (on a float32 model the cast is what torch does);
- the installed timm's blocks call ``attn(x, attn_mask=None, is_causal=False)`` and their attention forward takes
  ``x`` only: ``parity_kit.without_mask`` binds it (checking the defaults);
- the layers ``wrap_modules_in_net`` and ``wrap_reparamed_modules_in_net`` create are created with float64 as the
  default dtype (their ``main`` moves the model with ``.to(device)`` afterwards; a float32 layer would round the
  float64 values copied or loaded into it). Only module construction runs under it: their float32 percentile and
  ``linspace`` tensors stay float32;
- data: one loader of the 8 smooth random images (labels 0) in batches of ``BATCH`` (their ``calib_loader``);
- random draws: ``torch.manual_seed(SEED)`` right before each unit's ``reconstruct_single_block`` (their
  mini-batch ``randperm``, the QDrop input mix and every quantizer's drop mask then come from the seed, as the
  harness's per-unit generator) and once before ``MLPReconstructor.reconstruct_model`` (one generator for all
  blocks, as the harness's);
- recording: both ``reconstruct_single_block``s are wrapped to pass ``iters=STEPS`` (their default is 20000) and
  to keep the unit's Hessian (``raw_grad``) before training, FIMA-Q's ``new_fisher_ro`` to keep the gathered
  Fisher terms after each refresh, and their loss functions' ``__call__`` to record each step's total loss.
  The script runs on one thread, as the tests: the Hessians are rounding noise (docs/methods.md, APHQ-ViT,
  Parity) and equal to the bit only on the same kernels and thread count.

A second fixture, ``swin_small_config``, holds (a) at W4A4 for both configurations on the small Swin (three stages,
shifted windows, two patch mergings) with RepQ-ViT's fixture's weights and images (its first 4 calibration images); the installed timm's Swin
block and patch merging call the authors' window attention as they expect (no shim).

Sizes: eq_n 32 candidates (2 ranges x 16 zero points), 2 search rounds, 8 images, one batch of 8 everywhere (their
``reconstruct_single_block`` draws mini-batches of its default ``batch_size`` 32, not ``optim_batch_size``, which
sizes only the loader's batches: with 8 images every step sees all 8 in a random order, as the harness's
``batch_size`` 8 does). Written in float64 (test_psaq_parity.py gives the reason): ``NAME.safetensors``
(the authors' logits, objective tensors, Hessians and Fisher terms) and ``NAME.json`` (configuration, commits,
every quantizer's parameters in call order, loss values). The model's weights and the images are those of
``tests/harness/fixtures/repq_parity/deit_small_config`` (the same seed-0 model and smooth images): the script
checks that they are equal to what it generated and records that file's digest instead of storing them again.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from parity_kit import SMALL_FIXTURES, authors_commit, save_fixture, smooth_images, without_mask  # noqa: E402

NAME = "deit_small_config"
EQ_N, SEARCH_ROUNDS, IMAGES, EVAL_IMAGES, BATCH, STEPS, SEED = 32, 2, 8, 4, 8, 10, 0
BITS = (4, 3)
SWIN_IMAGES = 4
OWN_PACKAGES = ("quant_layers", "quantizers", "utils")
# the same seed-0 weights and smooth images as RepQ-ViT's fixture of this configuration: taken from there
SHARED = REPO / "tests/harness/fixtures/repq_parity" / NAME


@contextlib.contextmanager
def cuda_shims() -> Iterator[None]:
    """The CUDA and torch.quantile shims of the module docstring."""
    saved = (torch.Tensor.cuda, torch.quantile)
    quantile = torch.quantile

    def cast_quantile(x, q, *args, **kwargs):
        if isinstance(q, torch.Tensor) and q.dtype != x.dtype:
            q = q.to(x.dtype)
        return quantile(x, q, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.quantile = cast_quantile
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.quantile = saved


@contextlib.contextmanager
def a_gpu_for_the_search() -> Iterator[None]:
    """``torch.cuda.is_available`` and ``get_device_properties`` for their search only (module docstring; torch's
    optimizers would look for the driver otherwise)."""
    saved = torch.cuda.is_available, torch.cuda.get_device_properties
    torch.cuda.is_available = lambda: True
    torch.cuda.get_device_properties = lambda *_: types.SimpleNamespace(total_memory=1 << 40)
    try:
        yield
    finally:
        torch.cuda.is_available, torch.cuda.get_device_properties = saved


def load_authors(checkout: Path, mlp: bool) -> types.SimpleNamespace:
    """Their modules, imported fresh from ``checkout`` (both repositories name their packages alike)."""
    for name in list(sys.modules):
        if name.split(".")[0] in OWN_PACKAGES:
            del sys.modules[name]
    sys.path.insert(0, str(checkout))
    try:
        import quant_layers
        import utils.block_recon as block_recon
        import utils.calibrator as calibrator
        import utils.wrap_net as wrap_net
        mlp_recon = importlib.import_module("utils.mlp_recon") if mlp else None
        from quantizers.uniform import UniformQuantizer
    finally:
        sys.path.remove(str(checkout))
    return types.SimpleNamespace(quant_layers=quant_layers, block_recon=block_recon, calibrator=calibrator,
                                 wrap_net=wrap_net, mlp_recon=mlp_recon, UniformQuantizer=UniformQuantizer,
                                 checkout=checkout)


def config(authors, bits: int):
    spec = importlib.util.spec_from_file_location("authors_config", authors.checkout / f"configs/{bits}bit/best.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.Config()
    cfg.calib_size = cfg.optim_size = IMAGES
    cfg.calib_batch_size = IMAGES
    cfg.optim_batch_size = BATCH
    cfg.eq_n, cfg.search_round = EQ_N, SEARCH_ROUNDS
    return cfg


def build_model(weights: dict[str, torch.Tensor]) -> nn.Module:
    model = VisionTransformer(**SMALL_FIXTURES[NAME]).eval()
    model.load_state_dict(weights)
    return model.double()


def bind_attention(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, Attention) and hasattr(module, "matmul1"):
            module.forward = types.MethodType(without_mask(module.forward), module)


def loader(images: torch.Tensor, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images[s:s + batch], torch.zeros(len(images[s:s + batch]), dtype=torch.long))
            for s in range(0, len(images), batch)]


def calibrated(authors, cfg, weights, images, recon: bool = False, model: nn.Module | None = None) -> nn.Module:
    model = model if model is not None else build_model(weights)
    kwargs = {"recon": recon} if authors.mlp_recon is not None else {}
    with float64_modules():
        qmodel = authors.wrap_net.wrap_modules_in_net(model, cfg, reparam=True, **kwargs)
    bind_attention(qmodel)
    with a_gpu_for_the_search():
        authors.calibrator.QuantCalibrator(qmodel, loader(images, cfg.calib_batch_size)).batching_quant_calib()
    with float64_modules():
        return authors.wrap_net.wrap_reparamed_modules_in_net(qmodel)


@contextlib.contextmanager
def float64_modules() -> Iterator[None]:
    """The modules their wrapping creates, created in float64 (module docstring)."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def _flat(t) -> list[list[float]]:
    """The values flattened, as runs [value, count] (per-token scales repeat one value: a smaller fixture)."""
    runs: list[list[float]] = []
    for value in torch.as_tensor(t).detach().reshape(-1).tolist():
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return runs


def quantizer_calls(authors, qmodel: nn.Module, image: torch.Tensor) -> list[dict]:
    """Every quantized layer in call order: its weight parameters (Linear, Conv2d) and its activation
    quantizers' (one input, or the matmul's two operands), flattened."""
    layers = authors.quant_layers
    names = {m: n for n, m in qmodel.named_modules()}
    calls: list[dict] = []

    def record(module, args, out):
        entry = {"name": names[module]}
        if isinstance(module, layers.MinMaxQuantMatMul):
            entry["activations"] = [{"scale": _flat(q.scale), "zero_point": _flat(q.zero_point)}
                                    for q in (module.A_quantizer, module.B_quantizer)]
        else:
            entry["weight"] = {"scale": _flat(module.w_quantizer.scale),
                               "zero_point": _flat(getattr(module.w_quantizer, "zero_point", torch.zeros(1)))}
            q = module.a_quantizer
            entry["activations"] = [{"scale": _flat(q.scale),
                                     "zero_point": _flat(getattr(q, "zero_point", torch.tensor(2. ** (q.n_bits - 1))))}]
        calls.append(entry)

    kinds = (layers.MinMaxQuantMatMul, layers.MinMaxQuantLinear, layers.MinMaxQuantConv2d)
    handles = [m.register_forward_hook(record) for m in qmodel.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        qmodel(image)
    for handle in handles:
        handle.remove()
    return calls


@contextlib.contextmanager
def recorded_steps(authors, steps: int, seed: int, losses: dict, snapshots: dict | None = None) -> Iterator[None]:
    """Their ``reconstruct_single_block`` with ``steps`` iterations after seeding, recording each step's loss
    (module docstring) and, per unit, the objective's tensors."""
    recon = authors.block_recon
    original_single, original_call = recon.BlockReconstructor.reconstruct_single_block, recon.LossFunction.__call__
    current = {}

    def single(self, name, block, device, **kwargs):
        current["name"] = name
        losses[name] = []
        if snapshots is not None and getattr(block, "raw_grad", None) is not None:
            snapshots[f"{name}.hessian"] = block.raw_grad.detach().clone()
        torch.manual_seed(seed)
        out = original_single(self, name, block, device, iters=steps, **kwargs)
        return out

    def call(self, pred, tgt, *args, **kwargs):
        value = original_call(self, pred, tgt, *args, **kwargs)
        losses[current["name"]].append(value.item())
        return value

    original_fisher = getattr(recon.BlockReconstructor, "new_fisher_ro", None)

    def fisher(self, block, device):
        original_fisher(self, block, device)
        if snapshots is not None:
            snapshots[f"{current['name']}.fisher_grad"] = block.raw_grad.detach().clone()
            snapshots[f"{current['name']}.fisher_delta"] = block.delta_out.detach().clone()

    recon.BlockReconstructor.reconstruct_single_block, recon.LossFunction.__call__ = single, call
    if original_fisher is not None:
        recon.BlockReconstructor.new_fisher_ro = fisher
    try:
        yield
    finally:
        recon.BlockReconstructor.reconstruct_single_block, recon.LossFunction.__call__ = original_single, original_call
        if original_fisher is not None:
            recon.BlockReconstructor.new_fisher_ro = original_fisher


def objective_values(aphq, fimaq, generator: torch.Generator) -> tuple[dict, dict]:
    """Each objective of theirs on fixed tensors: the first call sets the normalizer (at ``pred0``), the second's
    value and gradient with respect to ``pred1`` are recorded."""
    shape = (2, 5, 8)
    tensors = {"pred0": torch.randn(shape, generator=generator, dtype=torch.float64),
               "pred1": torch.randn(shape, generator=generator, dtype=torch.float64),
               "target": torch.randn(shape, generator=generator, dtype=torch.float64),
               "hessian": torch.rand((1, *shape[1:]), generator=generator, dtype=torch.float64),
               "fisher_grad": torch.rand((3, shape[1] * shape[2]), generator=generator, dtype=torch.float64),
               "fisher_delta": torch.rand((3, shape[1] * shape[2]), generator=generator, dtype=torch.float64),
               "logits0": torch.randn((2, 10), generator=generator, dtype=torch.float64),
               "logits1": torch.randn((2, 10), generator=generator, dtype=torch.float64),
               "logits_target": torch.randn((2, 10), generator=generator, dtype=torch.float64)}
    values = {}
    dummy = nn.Module()
    dummy.inverse_B = torch.linalg.inv(tensors["fisher_delta"] @ tensors["fisher_delta"].t())
    cases = [("aphq_hessian_perturb", aphq, "hessian_perturb", "hessian"), ("aphq_mse", aphq, "mse", None),
             ("aphq_kl_div", aphq, "kl_div", None), ("fimaq_fisher_dplr", fimaq, "fisher_dplr", "fisher_grad"),
             ("fimaq_mse", fimaq, "mse", None), ("fimaq_kl_div", fimaq, "kl_div", None)]
    for key, authors, metric, grad in cases:
        kwargs = {"p1": 1.0, "p2": 1.0} if authors is fimaq else {}
        loss = authors.block_recon.LossFunction(dummy, weight=0.01, max_count=1000, rec_loss=metric, b_range=(20, 2),
                                                decay_start=0, warmup=0.2, **kwargs)
        logits = metric == "kl_div"
        first = tensors["logits0" if logits else "pred0"]
        second = tensors["logits1" if logits else "pred1"].clone().requires_grad_()
        target = tensors["logits_target" if logits else "target"]
        extra = [tensors[grad]] if grad else []
        loss.update_fisher = True
        loss(first, target, *extra)
        loss.update_fisher = False
        value = loss(second, target, *extra)
        value.backward()
        values[key] = value.item()
        tensors[f"{key}_grad"] = second.grad.detach().clone()
    return tensors, values


def calibrate_each_bits(authors, prefix: str, weights, images, evaluation, meta: dict, tensors: dict) -> None:
    """Their calibration at every bit width of BITS: the quantizers in call order and the logits, under ``prefix``."""
    for bits in BITS:
        qmodel = calibrated(authors, config(authors, bits), weights, images)
        meta["quantizers_in_call_order"][f"{prefix}_w{bits}a{bits}"] = quantizer_calls(authors, qmodel, evaluation[:1])
        with torch.no_grad():
            tensors[f"{prefix}_w{bits}a{bits}_logits"] = qmodel(evaluation)
        print(f"{prefix} W{bits}A{bits} calibrated")


def run_aphq(aphq, weights, images, evaluation, meta: dict, tensors: dict) -> None:
    calibrate_each_bits(aphq, "aphq", weights, images, evaluation, meta, tensors)
    # (c) block reconstruction's first steps, W4A4, after calibration (no MLP reconstruction)
    cfg = config(aphq, 4)
    full_model = build_model(weights)
    qmodel = calibrated(aphq, cfg, weights, images)
    losses, snapshots = {}, {}
    with recorded_steps(aphq, STEPS, SEED, losses, snapshots):
        aphq.block_recon.BlockReconstructor(qmodel, full_model, loader(images, BATCH), metric=cfg.optim_metric,
                                            temp=cfg.temp, use_mean_hessian=cfg.use_mean_hessian).reconstruct_model(
            quant_act=True, mode=cfg.optim_mode, drop_prob=cfg.drop_prob, keep_gpu=cfg.keep_gpu)
    meta["block_steps"]["aphq_w4a4"] = losses
    for key in ("patch_embed.hessian", "blocks.0.hessian", "blocks.1.hessian"):
        tensors[f"aphq_{key}"] = snapshots[key]
    with torch.no_grad():
        tensors["aphq_w4a4_reconstructed_logits"] = qmodel(evaluation)
    print("APHQ-ViT block reconstruction:", losses)
    # (d) MLP reconstruction (ReLU), first steps of each block
    model, full_model = build_model(weights), build_model(weights)
    for name, module in model.named_modules():
        if name.split(".")[-1] == "mlp":
            module.act = nn.ReLU()
    mlp_losses = {}
    recon = aphq.mlp_recon
    original_single, original_call = recon.MLPReconstructor.reconstruct_single_block, recon.LossFunction.__call__
    current = {}

    def single(self, name, block, device, ub, **kwargs):
        current["name"] = name
        mlp_losses[name] = {"bound": float(ub), "losses": []}
        tensors[f"aphq_mlp_{name}.hessian"] = block.mlp.raw_grad.detach().clone()
        return original_single(self, name, block, device, ub, iters=STEPS, **kwargs)

    def call(self, *args, **kwargs):
        value = original_call(self, *args, **kwargs)
        mlp_losses[current["name"]]["losses"].append(value.item())
        return value

    recon.MLPReconstructor.reconstruct_single_block, recon.LossFunction.__call__ = single, call
    try:
        torch.manual_seed(SEED)
        recon.MLPReconstructor(model, full_model, loader(images, BATCH), metric=cfg.recon_metric,
                               temp=cfg.temp).reconstruct_model(pct=cfg.pct)
    finally:
        recon.MLPReconstructor.reconstruct_single_block, recon.LossFunction.__call__ = original_single, original_call
    meta["mlp_steps"]["aphq_w4a4"] = mlp_losses
    with torch.no_grad():
        tensors["aphq_mlp_reconstructed_logits"] = model(evaluation)
    print("APHQ-ViT MLP reconstruction:", mlp_losses)


def run_fimaq(fimaq, weights, images, evaluation, meta: dict, tensors: dict) -> None:
    calibrate_each_bits(fimaq, "fimaq", weights, images, evaluation, meta, tensors)
    cfg = config(fimaq, 4)
    qmodel = calibrated(fimaq, cfg, weights, images)
    losses, snapshots = {}, {}
    with recorded_steps(fimaq, STEPS, SEED, losses, snapshots):
        fimaq.block_recon.BlockReconstructor(qmodel, cfg.optim_batch_size, loader(images, BATCH),
                                             metric=cfg.optim_metric, temp=cfg.temp, k=cfg.k, dis_mode=cfg.dis_mode,
                                             p1=cfg.p1, p2=cfg.p2).reconstruct_model(
            quant_act=True, mode=cfg.optim_mode, drop_prob=cfg.drop_prob, keep_gpu=cfg.keep_gpu)
    meta["block_steps"]["fimaq_w4a4"] = losses
    tensors["fimaq_blocks.0.fisher_grad"] = snapshots["blocks.0.fisher_grad"]
    tensors["fimaq_blocks.0.fisher_delta"] = snapshots["blocks.0.fisher_delta"]
    with torch.no_grad():
        tensors["fimaq_w4a4_reconstructed_logits"] = qmodel(evaluation)
    print("FIMA-Q block reconstruction:", losses)


def compact(path: Path) -> None:
    """The JSON rewritten one entry a line (the parameter lists on theirs): a few times smaller."""
    meta = json.loads(path.read_text())
    lines = [f"{json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}" for key, value in meta.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def write_swin_fixture(directory: Path, aphq, fimaq, commits: dict) -> None:
    """Calibration only (a), W4A4, both configurations, on ``swin_small_config`` (the weights and images of
    RepQ-ViT's fixture of it, checked by digest)."""
    shared = REPO / "tests/harness/fixtures/repq_parity/swin_small_config"
    stored = load_file(str(shared.with_suffix(".safetensors")))
    weights = {k.removeprefix("weights."): v for k, v in stored.items() if k.startswith("weights.")}
    # the first 4 calibration images (one search batch of 4): the harness's side of the test stays short
    images, evaluation = stored["calibration_images"][:SWIN_IMAGES].double(), stored["evaluation_images"].double()

    def build(weights_):
        model = SwinTransformer(**SMALL_FIXTURES["swin_small_config"]).eval()
        model.load_state_dict(weights_)
        return model.double()

    meta = {"authors": commits, "timm_class": "SwinTransformer", "kwargs": SMALL_FIXTURES["swin_small_config"],
            "dtype": "float64", "eq_n": EQ_N, "search_round": SEARCH_ROUNDS,
            "produced_by": "benchmarks/aphq_fimaq_parity.py --write-fixtures",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "quantizers_in_call_order": {},
            "weights_and_images": {
                "fixture": str(shared.relative_to(REPO)),
                "sha256": hashlib.sha256(shared.with_suffix(".safetensors").read_bytes()).hexdigest()}}
    meta["calibration_images"] = SWIN_IMAGES
    tensors = {}
    for key, authors in (("aphq", aphq), ("fimaq", fimaq)):
        cfg = config(authors, 4)
        cfg.calib_size = cfg.calib_batch_size = SWIN_IMAGES
        qmodel = calibrated(authors, cfg, weights, images, model=build(weights))
        meta["quantizers_in_call_order"][f"{key}_w4a4"] = quantizer_calls(authors, qmodel, evaluation[:1])
        with torch.no_grad():
            tensors[f"{key}_w4a4_logits"] = qmodel(evaluation)
        print(f"Swin {key} W4A4 calibrated")
    save_fixture(directory, "swin_small_config", tensors, {}, meta)
    compact(directory / "swin_small_config.json")


def main() -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aphq", type=Path, required=True, help="checkout of github.com/GoatWu/APHQ-ViT")
    parser.add_argument("--fimaq", type=Path, required=True, help="checkout of github.com/ShiheWang/FIMA-Q")
    parser.add_argument("--write-fixtures", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the test runs (module docstring of tests/harness/test_aphq_parity.py)
    torch.manual_seed(SEED)
    model = VisionTransformer(**SMALL_FIXTURES[NAME]).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(SEED)
    images = smooth_images(IMAGES, SMALL_FIXTURES[NAME]["img_size"], generator).double()
    evaluation = smooth_images(EVAL_IMAGES, SMALL_FIXTURES[NAME]["img_size"], generator).double()
    meta = {"authors": {"aphq": {"repository": "https://github.com/GoatWu/APHQ-ViT",
                                 "commit": authors_commit(args.aphq)},
                        "fimaq": {"repository": "https://github.com/ShiheWang/FIMA-Q",
                                  "commit": authors_commit(args.fimaq)}},
            "timm_class": "VisionTransformer", "kwargs": SMALL_FIXTURES[NAME], "seed": SEED, "dtype": "float64",
            "eq_n": EQ_N, "search_round": SEARCH_ROUNDS, "batch": BATCH, "steps": STEPS,
            "produced_by": "benchmarks/aphq_fimaq_parity.py --write-fixtures",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "quantizers_in_call_order": {}, "block_steps": {}, "mlp_steps": {}}
    same = load_file(str(SHARED.with_suffix(".safetensors")))
    if not (torch.equal(same["calibration_images"].double(), images)
            and torch.equal(same["evaluation_images"].double(), evaluation)
            and all(torch.equal(same[f"weights.{k}"], v) for k, v in weights.items())):
        raise SystemExit(f"{SHARED}: other weights or images than this script's; no fixture written")
    meta["weights_and_images"] = {"fixture": str(SHARED.relative_to(REPO)),
                                  "sha256": hashlib.sha256(SHARED.with_suffix(".safetensors").read_bytes()).hexdigest()}
    tensors = {}
    with cuda_shims():
        aphq = load_authors(args.aphq, mlp=True)
        run_aphq(aphq, weights, images, evaluation, meta, tensors)
        fimaq = load_authors(args.fimaq, mlp=False)
        run_fimaq(fimaq, weights, images, evaluation, meta, tensors)
        objective_tensors, meta["objective_values"] = objective_values(aphq, fimaq,
                                                                       torch.Generator().manual_seed(SEED + 1))
    tensors.update({f"objective.{k}": v for k, v in objective_tensors.items()})
    args.write_fixtures.mkdir(parents=True, exist_ok=True)
    save_fixture(args.write_fixtures, NAME, {k: v.contiguous() for k, v in tensors.items()}, {}, meta)
    compact(args.write_fixtures / f"{NAME}.json")
    with cuda_shims():
        write_swin_fixture(args.write_fixtures, aphq, fimaq, meta["authors"])


if __name__ == "__main__":
    main()
