"""PTQ4ViT reference parity: the ``ptq4vit`` calibrator against the authors' own code (docs/methods.md, PTQ4ViT).

    python benchmarks/ptq4vit_parity.py --authors /path/to/PTQ4ViT [--bits w8a8,w6a6,w4a4]
        [--calib-images 32] [--eval-images 8] [--seed 0] [--dtype float64]
    python benchmarks/ptq4vit_parity.py --authors /path/to/PTQ4ViT --write-fixtures tests/harness/fixtures/ptq4vit_parity

``--authors`` is a checkout of github.com/hahnyuan/PTQ4ViT. Its ``configs/PTQ4ViT.py``,
``utils/models.py`` (``get_net``), ``utils/net_wrap.py`` (``wrap_modules_in_net``) and
``utils/quant_calib.py`` (``HessianQuantCalibrator(..., sequential=False, batch_size=4)`` and
``batching_quant_calib()``, as their ``example/test_vit.py`` calls them) are imported from there and run
unchanged; nothing of it is copied. The shims, undone afterwards:

- ``timm.create_model`` returns our random-init timm model (seeded) instead of downloading pretrained
  weights; ``get_net`` then swaps in their attention forward and matmul modules as usual;
- their (non-window) attention forward takes ``(x)`` only, while the installed timm's blocks also pass
  ``attn_mask=None, is_causal=False``: each is wrapped to check those are the defaults and call theirs
  (their window attention forward takes the installed timm's call as it is);
- on Swin, the model (both sides) is timm's ``SwinTransformer`` with the classifier of the timm they wrote
  for, average pooling and then a Linear named ``head`` (``SwinWithLinearHead``): their wrapper picks a
  Linear's quantizer by its last name and has none for the installed timm's ``head.fc``;
- ``Tensor.cuda`` / ``Module.cuda`` return the object itself and ``torch.cuda.empty_cache`` does
  nothing, so the code runs on the CPU;
- the configuration's bit widths (``w_bit``, ``a_bit``, ``A_bit``, ``B_bit``, 8 in the file) are set to
  the bit spec's, in place;
- with ``--dtype float64`` torch's default dtype is float64 while their code runs, so the candidate
  tensors it builds with ``torch.tensor`` (float32 by default) are float64 like the model.

The calibration loader is one batch of all calibration images, as theirs. The harness side: the same
timm weights, ``standard`` profile, calibrator ``ptq4vit`` (defaults) on the same images. Printed per bit
width: the quantized logits' max abs difference, relative L2 and argmax agreement, and the agreement of
every searched scale (weights, Linear inputs, q / k / v per head, the post-softmax split).

``--write-fixtures DIR`` runs the small DeiT and Swin configurations below in float64 with 32 (DeiT) or
8 (Swin) calibration and 4 evaluation images at W8A8, W6A6 and W4A4 and writes ``NAME.safetensors``
(float32 timm weights, the images, the authors' float64 logits) and ``NAME.json`` (configuration, the
authors' commit, torch version and CPU capability, the authors' scales by layer), which
``tests/harness/test_ptq4vit_parity.py`` checks.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import types
from pathlib import Path
from typing import Iterator

import timm
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.model.arch import is_window_attention  # noqa: E402
from harness.model.instrument import get_point  # noqa: E402
from harness.plugin.method import CalibrationContext, CalibrationSet  # noqa: E402
from harness.quant.bits import BitSpec, parse_bits  # noqa: E402
from harness.quant.convert import QuantConfig, quantize_model  # noqa: E402
from parity_kit import FULL_SIZE, SMALL_FIXTURES, authors_commit, parity_parser, save_fixture, smooth_images, without_mask  # noqa: E402
from methods.ptq4vit.calibrator import PTQ4ViTCalibrator  # noqa: E402

class SwinWithLinearHead(SwinTransformer):
    """timm's Swin with the classifier of the timm the authors wrote for: average pooling, then a Linear
    named ``head``. Their wrapper picks each Linear's quantizer by its last name, which has no entry for
    the installed timm's ``head.fc``; both sides calibrate this same model."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.head = nn.Linear(self.num_features, kwargs.get("num_classes", 1000))

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((1, 2))
        return x if pre_logits else self.head(x)


# the fixtures' calibration images: the authors' 32 on DeiT; 8 on Swin, whose calibration costs more
FIXTURE_CALIBRATION_IMAGES = {"deit_small_config": 32, "swin_small_config": 8}


def model_class(name: str) -> type[nn.Module]:
    return SwinWithLinearHead if name.startswith("swin") else VisionTransformer


def authors_modules(checkout: Path) -> types.SimpleNamespace:
    sys.path.insert(0, str(checkout))
    return types.SimpleNamespace(models=importlib.import_module("utils.models"),
                                 net_wrap=importlib.import_module("utils.net_wrap"),
                                 quant_calib=importlib.import_module("utils.quant_calib"),
                                 config=importlib.import_module("configs.PTQ4ViT"))


@contextlib.contextmanager
def shims(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """The replacements the module docstring lists, undone afterwards."""
    saved = (timm.create_model, torch.Tensor.cuda, nn.Module.cuda, torch.cuda.empty_cache, torch.get_default_dtype())
    timm.create_model = lambda name, pretrained=False, **kwargs: model
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.cuda.empty_cache = lambda: None
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        timm.create_model, torch.Tensor.cuda, nn.Module.cuda, torch.cuda.empty_cache, default = saved
        torch.set_default_dtype(default)


def run_authors(authors, model: nn.Module, bits: BitSpec, calib: torch.Tensor, evaluation: torch.Tensor,
                dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
    """Their calibration of ``model`` (modified in place); the quantized logits and every searched scale."""
    config = authors.config
    for table, value in ((config.w_bit, bits.weight_bits), (config.a_bit, bits.act_bits),
                         (config.A_bit, bits.act_bits), (config.B_bit, bits.act_bits)):
        for key in table:
            table[key] = value
    with shims(model, dtype):
        net = authors.models.get_net("deit_tiny_patch16_224")
        for module in net.modules():
            if hasattr(module, "matmul1") and not is_window_attention(module):
                module.forward = types.MethodType(without_mask(module.forward), module)
        wrapped = authors.net_wrap.wrap_modules_in_net(net, config)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(calib, torch.zeros(len(calib))),
                                             batch_size=len(calib), shuffle=False)
        calibrator = authors.quant_calib.HessianQuantCalibrator(net, wrapped, loader, sequential=False, batch_size=4)
        calibrator.batching_quant_calib()
        with torch.no_grad():
            logits = net(evaluation)
    scales = {}
    for name, module in wrapped.items():
        if hasattr(module, "w_interval"):
            scales[f"{name}.weight"] = module.w_interval.reshape(-1).tolist()
        if hasattr(module, "a_interval") and getattr(module, "a_bit", 32) < 32:
            scales[f"{name}.input"] = torch.as_tensor(module.a_interval).reshape(-1).tolist()
        if hasattr(module, "split"):
            scales[f"{name}.A"] = [float(module.split)]
        elif hasattr(module, "A_interval"):
            scales[f"{name}.A"] = module.A_interval.reshape(-1).tolist()
        if hasattr(module, "B_interval"):
            scales[f"{name}.B"] = module.B_interval.reshape(-1).tolist()
    return logits, scales


def harness_scales(qmodel: nn.Module) -> dict:
    """The harness's searched scales under the authors' names (on a DeiT q's divided by timm's 1/sqrt(d),
    which the harness's q point carries and the authors apply after the product; the split of a
    twin-uniform post-softmax quantizer as the authors' ``A``)."""
    scales = {}
    for name, module in qmodel.named_modules():
        if hasattr(module, "weight_bits") and module.weight_bits:
            blocks = 3 if name.endswith("qkv") else (module.weight.shape[0] if module.weight.dim() == 4 else 1)
            rows = module.weight.shape[0] // blocks
            scales[f"{name}.weight"] = module.weight_scale.reshape(-1)[::rows].tolist()
        quantizer = get_point(module, "in") if hasattr(module, "weight_bits") else None
        if quantizer is not None:
            scales[f"{name}.input"] = quantizer.scale.reshape(-1).tolist()
        if hasattr(module, "qkv") and get_point(module, "q") is not None:
            q_scale = get_point(module, "q").scale / (1 if is_window_attention(module) else module.scale)
            scales[f"{name}.matmul1.A"] = q_scale.reshape(-1).tolist()
            scales[f"{name}.matmul1.B"] = get_point(module, "k").scale.reshape(-1).tolist()
            scales[f"{name}.matmul2.A"] = get_point(module, "attn").scale.reshape(-1).tolist()
            scales[f"{name}.matmul2.B"] = get_point(module, "v").scale.reshape(-1).tolist()
    return scales


def run(name: str, kwargs: dict, authors, bits: BitSpec, calib: torch.Tensor, evaluation: torch.Tensor,
        seed: int, dtype: torch.dtype) -> dict:
    """Calibrate and evaluate both sides in ``dtype``; print and return the comparison."""
    torch.manual_seed(seed)
    model = model_class(name)(**kwargs).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(dtype)
    calib, evaluation = calib.to(dtype), evaluation.to(dtype)
    reference = model_class(name)(**kwargs).eval()
    reference.load_state_dict(weights)
    reference.to(dtype)
    reference_logits, theirs = run_authors(authors, reference, bits, calib, evaluation, dtype)
    qmodel = quantize_model(model, bits, QuantConfig()).to(dtype)
    PTQ4ViTCalibrator().calibrate(qmodel, CalibrationContext(
        fp_model=model, calibration=CalibrationSet(calib), bits=bits, seed=seed, device=torch.device("cpu"),
        batch_size=len(calib)))
    with torch.no_grad():
        logits = qmodel(evaluation)
    ours = harness_scales(qmodel)
    missing = sorted(set(theirs) ^ set(ours))
    same = sum(theirs[k] == ours[k] for k in theirs if k in ours)
    worst = max((abs(a - b) / abs(a) for k in theirs if k in ours for a, b in zip(theirs[k], ours[k])),
                default=float("nan"))
    gap = (logits - reference_logits).abs().max().item()
    relative_l2 = ((logits - reference_logits).norm() / reference_logits.norm()).item()
    agree = (logits.argmax(1) == reference_logits.argmax(1)).sum().item()
    print(f"\n== {name} {bits} {str(dtype).removeprefix('torch.')}: searched scales {len(theirs)} authors, "
          f"{len(ours)} harness{'; unpaired: ' + ', '.join(missing) if missing else ''}")
    print(f"  scales identical: {same}/{len(theirs)}; largest relative difference {worst:.2e}")
    for key in theirs:
        if key in ours and theirs[key] != ours[key]:
            print(f"    {key}: authors {theirs[key]} harness {ours[key]}")
    print(f"  quantized logits: max abs diff {gap:.2e}, relative L2 {relative_l2:.2e}, "
          f"argmax agreement {agree}/{len(logits)}; logit scale {reference_logits.abs().max().item():.3g}")
    return {"weights": weights, "reference_logits": reference_logits, "scales": theirs, "complete": not missing}


def write_fixtures(directory: Path, authors, commit: str, seed: int, bits: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    for name, kwargs in SMALL_FIXTURES.items():
        size = kwargs["img_size"]
        calib = smooth_images(FIXTURE_CALIBRATION_IMAGES[name], size, generator)
        evaluation = smooth_images(4, size, generator)
        tensors = {"calibration_images": calib, "evaluation_images": evaluation}
        scales = {}
        for spec_bits in bits:
            result = run(name, kwargs, authors, parse_bits(spec_bits), calib, evaluation, seed, torch.float64)
            if not result["complete"]:
                raise SystemExit(f"{name}: the searched scales do not pair up; no fixture written")
            tensors[f"authors_logits_{spec_bits}"] = result["reference_logits"]
            scales[spec_bits] = result["scales"]
        save_fixture(directory, name, tensors, result["weights"], {
            "authors_repository": "https://github.com/hahnyuan/PTQ4ViT", "authors_commit": commit,
            "timm_class": model_class(name).__name__, "kwargs": kwargs, "seed": seed, "dtype": "float64",
            "torch": torch.__version__, "timm": timm.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "produced_by": "benchmarks/ptq4vit_parity.py --write-fixtures", "authors_scales": scales})


def main() -> None:
    parser = parity_parser(__doc__.splitlines()[0], "github.com/hahnyuan/PTQ4ViT", "deit_small_config",
                           f"any of {', '.join([*SMALL_FIXTURES, *FULL_SIZE])}", "w8a8,w6a6,w4a4", 8)
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    authors = authors_modules(args.authors)
    commit = authors_commit(args.authors)
    print(f"authors' code: {args.authors} at {commit}; torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if args.write_fixtures:
        write_fixtures(args.write_fixtures, authors, commit, args.seed, args.bits.split(","))
        return
    generator = torch.Generator().manual_seed(args.seed)
    for name in args.models.split(","):
        kwargs = {**SMALL_FIXTURES, **FULL_SIZE}[name]
        calib = smooth_images(args.calib_images, kwargs["img_size"], generator)
        evaluation = smooth_images(args.eval_images, kwargs["img_size"], generator)
        for spec_bits in args.bits.split(","):
            run(name, kwargs, authors, parse_bits(spec_bits), calib, evaluation, args.seed,
                getattr(torch, args.dtype))


if __name__ == "__main__":
    main()
