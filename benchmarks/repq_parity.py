"""RepQ-ViT reference parity: the ``repq`` calibrator against the authors' own code (docs/methods.md, RepQ-ViT).

    python benchmarks/repq_parity.py --authors /path/to/RepQ-ViT [--models deit_tiny,swin_tiny] [--bits w4a4,w6a6]
        [--calib-images 32] [--eval-images 64] [--seed 0] [--dtype float32]
    python benchmarks/repq_parity.py --authors /path/to/RepQ-ViT --write-fixtures tests/harness/fixtures/repq_parity
    python benchmarks/repq_parity.py --authors /path/to/RepQ-ViT --write-quantile-fixture tests/harness/fixtures/repq_parity

``--authors`` is a checkout of github.com/zkkli/RepQ-ViT. Its ``classification/test_quant.py`` is
imported from there and its ``main()`` runs unchanged (``--model deit_tiny`` for a DeiT, ``swin_tiny``
for a Swin, which picks their Swin branch); nothing of it is copied. These shims stand in for what
needs ImageNet, the network, a GPU or their timm 0.4.12, and nothing else:

- ``timm.create_model`` returns our random-init timm model (seeded) instead of downloading
  pretrained weights; the authors' ``build_model`` then swaps in their attention forward and
  matmul modules as usual;
- their ViT attention forward takes ``(x)`` only, while the installed timm's blocks also pass
  ``attn_mask=None, is_causal=False``: ``build_model`` is wrapped to bind a forward that checks those
  are the defaults and calls theirs with ``x`` (their Swin window-attention forward takes
  ``(x, mask=None)`` as the installed timm calls it, and is left alone);
- the installed timm's attention and MLP hold identity submodules named ``q_norm`` / ``k_norm`` /
  ``norm`` that the older timm lacked, and the authors' reparameterization loop picks modules by
  ``'norm' in name``: the ``build_model`` wrapper turns each such identity into a plain attribute
  (still called, no longer listed by ``named_modules``);
- Swin's patch merging: timm 0.4.12 runs its norm and reduction on tokens (B, L, 4C), the installed
  timm on a map (B, H/2, W/2, 4C), which their per-channel search (channels last for a 3-d input,
  first for a 4-d one, a conv weight's layout) would read as one channel per image. The
  ``build_model`` wrapper binds a patch-merging forward that gathers the 2x2 neighbourhoods as the
  installed timm does (the same channel order as timm 0.4.12's concatenation), runs norm and
  reduction on the (B, L, 4C) tokens and gives the map back. Swin blocks feed qkv with windows
  (B·nW, N, C) and fc1 with tokens (B, L, C) in both timms; the other differences of the installed
  timm's Swin need no shim (docs/methods.md, RepQ-ViT, Parity with the authors' code);
- ``build_dataset`` returns one loader with the calibration images and one with the evaluation
  images (labels 0), instead of reading ImageNet folders;
- ``validate`` records the quantized model's logits on the evaluation images instead of computing
  accuracy. ``--device cpu`` replaces their default ``cuda``.

The harness side: the same timm weights, ``standard`` profile, calibrator ``repq`` on the same
calibration images, logits on the same evaluation images. Printed per model and bit width: the
quantized logits' max abs difference, relative L2 and argmax agreement, and the largest difference
of the per-tensor quantizer scales, paired by call order (on a DeiT both quantize q before timm's
1/sqrt(d) and scale q·kᵀ after the product; on a Swin both quantize q already scaled).

``--write-fixtures DIR`` runs the small configurations (two DeiTs, head dims 16 and 24, and a Swin;
``--models`` picks some) in float64 with 8 calibration and 4 evaluation images at W4A4 and W6A6 and writes
``NAME.safetensors`` (float32 timm weights, the images, the authors' float64 logits) and
``NAME.json`` (configuration, the authors' commit, the authors' scale and zero point of every
activation quantizer in call order), which
``tests/harness/test_repq_parity.py`` checks. Float64 for the reason given in
``tests/harness/test_psaq_parity.py``: no value lands within float rounding of a rounding boundary.

``--write-quantile-fixture DIR`` runs the authors' two searches (``UniformQuantizer`` and
``LogSqrt2Quantizer`` ``init_quantization_scale``, per tensor) on float32 inputs that
``parity_kit.heavy_tailed_values`` regenerates from a seed, one of more than 2^24 values and one of
fewer, and adds what they chose (and the candidate bounds torch.quantile or numpy's percentile gave
them) to ``DIR/quantile_search.json`` under the branch the installed torch makes their code take:
``published`` where torch.quantile refuses more than 2^24 values (torch <= 2.13: numpy's percentile
above, ranks in float32 below), ``torch2.14`` where it accepts them. Run it once with each torch;
``tests/harness/test_repq_parity.py`` checks the harness's ``quantile`` option against both.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import types
from pathlib import Path
from typing import Iterator

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import PatchMerging
from timm.models.vision_transformer import Attention
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.plugin.method import CalibrationContext, CalibrationSet  # noqa: E402
from harness.quant.bits import BitSpec, parse_bits  # noqa: E402
from harness.quant.convert import QuantConfig, quantize_model  # noqa: E402
from harness.quant.modules import ActQuantizer  # noqa: E402
from parity_kit import (FULL_SIZE, SMALL_FIXTURES, authors_commit, heavy_tailed_values, parity_parser,  # noqa: E402
                        save_fixture, smooth_images, timm_class, twin_models, without_mask)
from methods.repq_vit.calibrator import RepQCalibrator  # noqa: E402



# RepQ-ViT's own fixtures beside the shared ones: a DeiT with head dimension 24, whose 1/sqrt(d) is no power of
# two, so quantizing q before or after the factor differs (docs/methods.md, RepQ-ViT)
REPQ_FIXTURES = {**SMALL_FIXTURES,
                 "deit_head24_config": dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2,
                                            num_classes=10)}
# the quantile fixture's inputs: (name, number of values, seed); the first is above torch <= 2.13's limit
QUANTILE_INPUTS = (("above_2_24", (1 << 24) + (1 << 20), 0), ("below_2_24", 1_000_003, 1))
QUANTILE_BITS = (4, 6)


def authors_model_name(name: str) -> str:
    """The authors' ``--model``: only the family matters (their Swin branch reparameterizes ``layers``)."""
    return "swin_tiny" if name.startswith("swin") else "deit_tiny"


def authors_module(checkout: Path):
    """The authors' ``classification/test_quant.py`` as a module (it imports their ``utils`` and ``quant``)."""
    sys.path.insert(0, str(checkout / "classification"))
    import test_quant
    return test_quant


@contextlib.contextmanager
def shims(authors, model: nn.Module, calib: torch.Tensor, evaluation: torch.Tensor,
          captured: dict) -> Iterator[None]:
    """The replacements the module docstring lists, undone afterwards."""
    def create_model(name, pretrained=False, **kwargs):
        return model

    def build_model(name):
        built = original_build_model(name)
        for module in built.modules():
            if isinstance(module, Attention) and hasattr(module, "matmul1"):
                module.forward = types.MethodType(without_mask(module.forward), module)
            elif isinstance(module, PatchMerging):
                module.forward = types.MethodType(_merge_as_tokens, module)
        for module in list(built.modules()):
            for child_name, child in list(module.named_children()):
                if "norm" in child_name and isinstance(child, nn.Identity):
                    del module._modules[child_name]
                    object.__setattr__(module, child_name, child)
        return built

    def build_dataset(args):
        labels = lambda images: torch.zeros(len(images), dtype=torch.long)  # noqa: E731
        return ([(calib, labels(calib))], [(evaluation, labels(evaluation))])

    def validate(args, val_loader, q_model, criterion, device):
        with torch.no_grad():
            captured["logits"] = q_model(evaluation)
        captured["model"] = q_model
        return 0.0, 0.0, 0.0

    original_build_model = authors.build_model
    saved = timm.create_model, authors.build_model, authors.build_dataset, authors.validate
    timm.create_model, authors.build_model, authors.build_dataset, authors.validate = (
        create_model, build_model, build_dataset, validate)
    try:
        yield
    finally:
        timm.create_model, authors.build_model, authors.build_dataset, authors.validate = saved


def _merge_as_tokens(self, x: torch.Tensor) -> torch.Tensor:
    """The installed timm's ``PatchMerging.forward`` with norm and reduction on (B, L, 4C) tokens, as in
    timm 0.4.12 (module docstring)."""
    B, H, W, C = x.shape
    x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    _, H, W, _ = x.shape
    x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
    tokens = self.reduction(self.norm(x.reshape(B, -1, 4 * C)))
    return tokens.reshape(B, H // 2, W // 2, -1)


def authors_quantizer_calls(model: nn.Module, images: torch.Tensor, authors) -> list[dict]:
    """The authors' activation quantizers in the order one forward calls them, with their parameters."""
    from quant.quantizer import LogSqrt2Quantizer, UniformQuantizer
    weight_quantizers = {id(m.weight_quantizer) for m in model.modules() if hasattr(m, "weight_quantizer")}
    names = {module: name for name, module in model.named_modules()}
    calls: list[dict] = []
    handles = [module.register_forward_hook(lambda m, args, out: calls.append(
        {"name": names[m], "scale": m.delta.reshape(-1).tolist(),
         "zero_point": m.zero_point.reshape(-1).tolist() if hasattr(m, "zero_point") else [0.0]}))
        for module in model.modules()
        if isinstance(module, (UniformQuantizer, LogSqrt2Quantizer)) and id(module) not in weight_quantizers]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return calls


def harness_quantizer_calls(qmodel: nn.Module, images: torch.Tensor) -> list[dict]:
    """As :func:`authors_quantizer_calls` (q as the authors quantize it: on a DeiT before timm's 1/sqrt(d),
    on a Swin after)."""
    names = {module: name for name, module in qmodel.named_modules()}
    calls: list[dict] = []
    handles = [module.register_forward_hook(lambda m, args, out: calls.append(
        {"name": names[m], "scale": m.scale.reshape(-1).tolist(), "zero_point": m.zero_point.reshape(-1).tolist()}))
        for module in qmodel.modules() if isinstance(module, ActQuantizer)]
    with torch.no_grad():
        qmodel(images)
    for handle in handles:
        handle.remove()
    return calls


def run(name: str, kwargs: dict, authors, bits: BitSpec, calib: torch.Tensor, evaluation: torch.Tensor,
        seed: int, dtype: torch.dtype, quantile: str = "published") -> dict:
    """Calibrate and evaluate both sides in ``dtype``; print and return the comparison."""
    model, reference, weights = twin_models(name, kwargs, seed, dtype)
    calib, evaluation = calib.to(dtype), evaluation.to(dtype)
    captured: dict = {}
    args = authors.get_args_parser().parse_args(
        ["--model", authors_model_name(name), "--device", "cpu", "--seed", str(seed),
         "--calib-batchsize", str(len(calib)), "--w_bits", str(bits.weight_bits), "--a_bits", str(bits.act_bits)])
    authors.args = args
    with shims(authors, reference, calib, evaluation, captured):
        authors.main()
    reference_logits = captured["logits"]
    qmodel = quantize_model(model, bits, QuantConfig()).to(dtype)
    RepQCalibrator(RepQCalibrator.Options(quantile=quantile)).calibrate(qmodel, CalibrationContext(
        fp_model=model, calibration=CalibrationSet(calib), bits=bits, seed=seed, device=torch.device("cpu"),
        batch_size=len(calib)))
    with torch.no_grad():
        logits = qmodel(evaluation)
    theirs = authors_quantizer_calls(captured["model"], evaluation[:1], authors)
    ours = harness_quantizer_calls(qmodel, evaluation[:1])
    scale_gap = max((max(abs(a - b) / abs(a) for a, b in zip(t["scale"], o["scale"]))
                     for t, o in zip(theirs, ours)), default=float("nan"))
    zero_point_gap = max((max(abs(a - b) for a, b in zip(t["zero_point"], o["zero_point"]))
                          for t, o in zip(theirs, ours)), default=float("nan"))
    gap = (logits - reference_logits).abs().max().item()
    relative_l2 = ((logits - reference_logits).norm() / reference_logits.norm()).item()
    agree = (logits.argmax(1) == reference_logits.argmax(1)).sum().item()
    print(f"\n== {name} {bits} {str(dtype).removeprefix('torch.')}: activation quantizers authors {len(theirs)}, "
          f"harness {len(ours)}")
    print(f"  scales: max relative diff {scale_gap:.2e}; zero points: max abs diff {zero_point_gap:.2e}")
    print(f"  quantized logits: max abs diff {gap:.2e}, relative L2 {relative_l2:.2e}, "
          f"argmax agreement {agree}/{len(logits)}; logit scale {reference_logits.abs().max().item():.3g}")
    return {"weights": weights, "reference_logits": reference_logits, "quantizers": theirs,
            "complete": len(theirs) == len(ours)}


def write_fixtures(directory: Path, authors, commit: str, seed: int, names: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        kwargs = REPQ_FIXTURES[name]
        generator = torch.Generator().manual_seed(seed)
        size = kwargs["img_size"]
        calib, evaluation = smooth_images(8, size, generator), smooth_images(4, size, generator)
        tensors = {"calibration_images": calib, "evaluation_images": evaluation}
        quantizers = {}
        for spec_bits in ("w4a4", "w6a6"):
            result = run(name, kwargs, authors, parse_bits(spec_bits), calib, evaluation, seed, torch.float64)
            if not result["complete"]:
                raise SystemExit(f"{name}: the quantizer sets differ; no fixture written")
            tensors[f"authors_logits_{spec_bits}"] = result["reference_logits"]
            quantizers[spec_bits] = result["quantizers"]
        save_fixture(directory, name, tensors, result["weights"], {
            "authors_repository": "https://github.com/zkkli/RepQ-ViT", "authors_commit": commit,
            "timm_class": timm_class(name).__name__, "kwargs": kwargs, "seed": seed, "dtype": "float64",
            "produced_by": "benchmarks/repq_parity.py --write-fixtures", "quantizers_in_call_order": quantizers})


def authors_search_branch() -> str:
    """The branch the authors' search takes on the installed torch above 2^24 values (module docstring)."""
    try:
        torch.quantile(torch.zeros((1 << 24) + 1), 0.5)
    except RuntimeError:
        return "published"
    return "torch2.14"


@contextlib.contextmanager
def recorded_bounds(bounds: list[float]) -> Iterator[None]:
    """Record every value torch.quantile and numpy's percentile return (the authors' candidate bounds, in order)."""
    quantile, percentile = torch.quantile, np.percentile

    def recording(function):
        def call(*args, **kwargs):
            value = function(*args, **kwargs)
            bounds.append(float(value))
            return value
        return call
    torch.quantile, np.percentile = recording(quantile), recording(percentile)
    try:
        yield
    finally:
        torch.quantile, np.percentile = quantile, percentile


def write_quantile_fixture(directory: Path, checkout: Path, commit: str) -> None:
    """Add the installed torch's branch of the authors' per-tensor searches to ``quantile_search.json``."""
    sys.path.insert(0, str(checkout / "classification"))
    from quant.quantizer import LogSqrt2Quantizer, UniformQuantizer
    branch = authors_search_branch()
    path = directory / "quantile_search.json"
    fixture = json.loads(path.read_text()) if path.exists() else {}
    inputs = {}
    for name, count, seed in QUANTILE_INPUTS:
        values = heavy_tailed_values(count, seed)
        posterior = values.abs() / values.abs().max()  # in (0, 1], heavy near 0: the log-√2 search's input
        searches = []
        for bits in QUANTILE_BITS:
            for kind, quantizer, x in (("uniform", UniformQuantizer(n_bits=bits), values),
                                       ("log_sqrt2", LogSqrt2Quantizer(n_bits=bits), posterior)):
                bounds: list[float] = []
                with torch.no_grad(), recorded_bounds(bounds):
                    chosen = quantizer.init_quantization_scale(x)
                scale, zero_point = chosen if kind == "uniform" else (chosen, torch.zeros(()))
                searches.append({"kind": kind, "bits": bits, "scale": float(scale), "zero_point": float(zero_point),
                                 "candidate_bounds": bounds})
                print(f"{branch} {name} {kind} W{bits}: scale {float(scale):.9g}, zero point {float(zero_point):g}")
        inputs[name] = {"count": count, "seed": seed,
                        "sha256": hashlib.sha256(values.numpy().tobytes()).hexdigest(), "searches": searches}
    fixture.update({
        "authors_repository": "https://github.com/zkkli/RepQ-ViT", "authors_commit": commit,
        "produced_by": "benchmarks/repq_parity.py --write-quantile-fixture (once per torch)",
        "recipe": "parity_kit.heavy_tailed_values(count, seed), float32; log_sqrt2 searches |x| / max |x|",
        "percentiles": [0.999, 0.9999, 0.99999]})
    fixture.setdefault("branches", {})[branch] = {"torch": torch.__version__, "numpy": np.__version__,
                                                  "inputs": inputs}
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote branch {branch} of {path}")


def main() -> None:
    parser = parity_parser(__doc__.splitlines()[0], "github.com/zkkli/RepQ-ViT", None,
                           f"any of {', '.join([*FULL_SIZE, *REPQ_FIXTURES])} (default: deit_tiny; with --write-fixtures: "
                           f"{', '.join(REPQ_FIXTURES)})", "w4a4,w6a6", 64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--quantile", default="published", choices=("published", "torch2.14"),
                        help="the harness's repq quantile option (compare torch2.14 with the authors on torch 2.14)")
    parser.add_argument("--write-quantile-fixture", type=Path,
                        help="add the installed torch's branch of the authors' searches to DIR/quantile_search.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    commit = authors_commit(args.authors)
    print(f"authors' code: {args.authors} at {commit}")
    if args.write_quantile_fixture:
        write_quantile_fixture(args.write_quantile_fixture, args.authors, commit)
        return
    authors = authors_module(args.authors)
    if args.write_fixtures:
        write_fixtures(args.write_fixtures, authors, commit, args.seed,
                       args.models.split(",") if args.models else list(REPQ_FIXTURES))
        return
    generator = torch.Generator().manual_seed(args.seed)
    configs = {**FULL_SIZE, **REPQ_FIXTURES}
    for name in (args.models or "deit_tiny").split(","):
        size = configs[name]["img_size"]
        calib = smooth_images(args.calib_images, size, generator)
        evaluation = smooth_images(args.eval_images, size, generator)
        for spec_bits in args.bits.split(","):
            run(name, configs[name], authors, parse_bits(spec_bits), calib, evaluation, args.seed,
                getattr(torch, args.dtype), args.quantile)


if __name__ == "__main__":
    main()
