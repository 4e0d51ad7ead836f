"""PSAQ-ViT reference parity: the ``psaq`` quantizer profile against the authors' own code (docs/quantizer.md).

    python benchmarks/psaq_parity.py --authors /path/to/PSAQ-ViT [--models deit_tiny,swin_tiny]
        [--bits w8a8,w4a8] [--calib-images 32] [--eval-images 64] [--seed 0]
    python benchmarks/psaq_parity.py --authors /path/to/PSAQ-ViT --write-fixtures tests/harness/fixtures/psaq_parity

``--authors`` is a checkout of github.com/zkkli/PSAQ-ViT; its ``models`` package is imported from
there (it needs torch only) and never copied. For each model a random-init timm model and the
authors' model get the same weights (Swin: timm merges patches at the start of a stage, the authors
at the end of the previous one; ``head.fc`` is their ``head``). Each is min-max calibrated by its own
procedure on the same smooth random images (the authors': one FP forward, then ``model_quant()``;
the harness: ``psaq`` profile, ``minmax`` calibrator), then both are evaluated on fresh images.
Quantizers are paired by the order the forward pass calls them (matching the numbers of elements
they see). Printed per model and bit width: FP logit difference, every pair's range difference,
unpaired quantizers, and the quantized logits' max abs difference, relative L2 and argmax agreement.

``--write-fixtures DIR`` runs two small configurations of the same constructors (a DeiT and a Swin)
in float64 with 4 calibration and 4 evaluation images and writes, per model, ``NAME.safetensors``
(float32 weights by timm names, float32 images, the authors' float64 logits per bit width) and
``NAME.json`` (configuration, the authors' commit, the authors' range of every quantizer under its
harness name), which ``tests/harness/test_psaq_parity.py`` checks the harness against. Float64,
because in float32 a CPU whose matmuls round differently moves a few values across a rounding
boundary, which shifts logits by far more than float rounding.
"""
from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.plugin.calibrators import MinMaxCalibrator  # noqa: E402
from harness.plugin.method import CalibrationContext, CalibrationSet  # noqa: E402
from harness.quant.bits import BitSpec, parse_bits  # noqa: E402
from harness.quant.convert import QuantConfig, quantize_model  # noqa: E402
from harness.quant.modules import ActQuantizer  # noqa: E402
from parity_kit import authors_commit, parity_parser, save_fixture, smooth_images  # noqa: E402

# (timm constructor, authors' constructor name, keyword arguments both accept)
FULL = {
    "deit_tiny": (VisionTransformer, "VisionTransformer",
                  dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)),
    "swin_tiny": (SwinTransformer, "SwinTransformer",
                  dict(img_size=224, patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                       window_size=7)),
}
SMALL = {  # the fixtures' configurations: the same code paths at 32 px, a few hundred kB of fixtures
    "deit_small_config": (VisionTransformer, "VisionTransformer",
                          dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)),
    "swin_small_config": (SwinTransformer, "SwinTransformer",
                          dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4,
                               num_classes=10)),
}


@dataclass
class Call:
    """One quantizer call of a forward pass: who, how many values, and the frozen range."""

    name: str
    numel: int
    low: float
    high: float


def authors_models(checkout: Path) -> dict[str, type]:
    """The authors' model classes, imported from their checkout (their ``models`` package needs torch only)."""
    sys.path.insert(0, str(checkout))
    from models import swin_quant, vit_quant
    return {"VisionTransformer": vit_quant.VisionTransformer, "SwinTransformer": swin_quant.SwinTransformer}


def to_authors_state(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm names -> the authors' names (Swin's patch merging moves one stage back; ``head.fc`` -> ``head``)."""
    mapped = {}
    for key, value in timm_state.items():
        merge = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if merge:
            key = f"layers.{int(merge.group(1)) - 1}.downsample.{merge.group(2)}"
        mapped[key.replace("head.fc.", "head.")] = value
    return mapped


class _Config:
    """The authors' bit configuration object (``weight_bit``, ``activation_bit``)."""

    def __init__(self, bits: BitSpec) -> None:
        self.weight_bit, self.activation_bit = bits.weight_bits, bits.act_bits


def build_authors(constructor: type, kwargs: dict, bits: BitSpec, timm_model: nn.Module) -> nn.Module:
    """The authors' model of the same configuration, with the timm model's weights."""
    model = constructor(**kwargs, input_quant=True, cfg=_Config(bits)).eval()
    missing, unexpected = model.load_state_dict(to_authors_state(timm_model.state_dict()), strict=False)
    missing = [k for k in missing if not k.endswith(("x_min", "x_max", "relative_position_index", "attn_mask"))]
    if missing or unexpected:
        raise SystemExit(f"state dict mapping failed: missing {missing}, unexpected {unexpected}")
    return model


def call_order(model: nn.Module, images: torch.Tensor, quantizer_type: type,
               bounds: Callable[[nn.Module], tuple[float, float]]) -> list[Call]:
    """Every call of a ``quantizer_type`` module during one forward, with the quantizer's range."""
    names = {module: name for name, module in model.named_modules()}
    calls: list[Call] = []
    handles = [module.register_forward_hook(
        lambda m, args, out: calls.append(Call(names[m], args[0].numel() // len(images), *bounds(m))))
        for module in model.modules() if isinstance(module, quantizer_type)]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return calls


def pair(reference: list[Call], ours: list[Call]) -> tuple[list[tuple[Call, Call]], list[Call], list[Call]]:
    """Pairs in call order, aligned on the numbers of values seen; then the unpaired of each side."""
    matcher = difflib.SequenceMatcher(a=[c.numel for c in reference], b=[c.numel for c in ours], autojunk=False)
    pairs = [(reference[block.a + i], ours[block.b + i])
             for block in matcher.get_matching_blocks() for i in range(block.size)]
    paired_a, paired_b = {id(a) for a, _ in pairs}, {id(b) for _, b in pairs}
    return pairs, [c for c in reference if id(c) not in paired_a], [c for c in ours if id(c) not in paired_b]


def run(name: str, spec: tuple, authors: dict, bits: BitSpec, calib: torch.Tensor, evaluation: torch.Tensor,
        seed: int, verbose: bool, dtype: torch.dtype = torch.float32) -> dict:
    """Calibrate and evaluate both sides in ``dtype``; print and return the comparison."""
    timm_type, authors_name, kwargs = spec
    torch.manual_seed(seed)
    model = timm_type(**kwargs).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    reference = build_authors(authors[authors_name], kwargs, bits, model).to(dtype)
    model.to(dtype)
    calib, evaluation = calib.to(dtype), evaluation.to(dtype)
    with torch.no_grad():
        reference.model_freeze()  # an FP forward that observes nothing
        fp_gap = (reference(evaluation) - model(evaluation)).abs().max().item()
        reference.model_unfreeze()
        reference(calib)  # the authors' calibration: one FP forward of the whole set (test_quant.py)
        reference.model_quant()
        reference.model_freeze()
        reference_logits = reference(evaluation)
    qmodel = quantize_model(model, bits, QuantConfig(profile="psaq")).to(dtype)  # the quantizers' buffers too
    MinMaxCalibrator().calibrate(qmodel, CalibrationContext(fp_model=model, calibration=CalibrationSet(calib), bits=bits,
                                                            seed=seed, device=torch.device("cpu"),
                                                            batch_size=len(calib)))
    with torch.no_grad():
        logits = qmodel(evaluation)
    theirs = call_order(reference, evaluation[:1], type(reference.act_out),
                        lambda m: (m.x_min.item(), m.x_max.item()))
    ours = call_order(qmodel, evaluation[:1], ActQuantizer, lambda m: (m.low.item(), m.high.item()))
    pairs, only_theirs, only_ours = pair(theirs, ours)
    range_gap = max((max(abs(a.low - b.low), abs(a.high - b.high)) for a, b in pairs), default=float("nan"))
    relative_range_gap = max((max(abs(a.low - b.low), abs(a.high - b.high)) / max(abs(a.low), abs(a.high), 1e-30)
                              for a, b in pairs), default=float("nan"))
    gap = (logits - reference_logits).abs().max().item()
    relative_l2 = ((logits - reference_logits).norm() / reference_logits.norm()).item()
    agree = (logits.argmax(1) == reference_logits.argmax(1)).sum().item()
    print(f"\n== {name} {bits} {str(dtype).removeprefix('torch.')}: FP logits max abs diff {fp_gap:.2e}; quantizers: authors {len(theirs)}, "
          f"harness {len(ours)}, paired {len(pairs)}")
    if verbose:
        for a, b in pairs:
            print(f"  {a.name:45s} {b.name:55s} [{a.low:+.6g}, {a.high:+.6g}]  "
                  f"diff ({b.low - a.low:+.2e}, {b.high - a.high:+.2e})")
    for call in only_theirs:
        print(f"  authors only: {call.name} [{call.low:+.6g}, {call.high:+.6g}]")
    for call in only_ours:
        print(f"  harness only: {call.name} [{call.low:+.6g}, {call.high:+.6g}]")
    print(f"  ranges: max abs diff {range_gap:.2e}, max relative diff {relative_range_gap:.2e}")
    print(f"  quantized logits: max abs diff {gap:.2e}, relative L2 {relative_l2:.2e}, "
          f"argmax agreement {agree}/{len(logits)}")
    return {"weights": weights, "reference_logits": reference_logits, "pairs": pairs,
            "complete": not only_theirs and not only_ours}


def write_fixtures(directory: Path, authors: dict, commit: str, seed: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    for name, spec in SMALL.items():
        size = spec[2]["img_size"]
        calib, evaluation = smooth_images(4, size, generator), smooth_images(4, size, generator)
        tensors = {"calibration_images": calib, "evaluation_images": evaluation}
        ranges = {}
        for spec_bits in ("w8a8", "w4a8"):
            result = run(name, spec, authors, parse_bits(spec_bits), calib, evaluation, seed, verbose=False,
                         dtype=torch.float64)
            if not result["complete"]:
                raise SystemExit(f"{name}: the quantizer sets differ; no fixture written")
            tensors[f"authors_logits_{spec_bits}"] = result["reference_logits"]
            ranges[spec_bits] = {ours.name: [theirs.name, theirs.low, theirs.high] for theirs, ours in result["pairs"]}
        save_fixture(directory, name, tensors, result["weights"], {
            "authors_repository": "https://github.com/zkkli/PSAQ-ViT", "authors_commit": commit,
            "timm_class": spec[0].__name__, "kwargs": spec[2], "seed": seed, "dtype": "float64",
            "produced_by": "benchmarks/psaq_parity.py --write-fixtures", "ranges": ranges})


def main() -> None:
    parser = parity_parser(__doc__.splitlines()[0], "github.com/zkkli/PSAQ-ViT", "deit_tiny,swin_tiny",
                           f"any of {', '.join(FULL)}", "w8a8,w4a8", 64)
    parser.add_argument("--verbose", action="store_true", help="print every quantizer pair")
    args = parser.parse_args()
    torch.set_num_threads(2)
    authors = authors_models(args.authors)
    commit = authors_commit(args.authors)
    print(f"authors' code: {args.authors} at {commit}")
    if args.write_fixtures:
        write_fixtures(args.write_fixtures, authors, commit, args.seed)
        return
    generator = torch.Generator().manual_seed(args.seed)
    for name in args.models.split(","):
        size = FULL[name][2]["img_size"]
        calib = smooth_images(args.calib_images, size, generator)
        evaluation = smooth_images(args.eval_images, size, generator)
        for spec_bits in args.bits.split(","):
            run(name, FULL[name], authors, parse_bits(spec_bits), calib, evaluation, args.seed, args.verbose)


if __name__ == "__main__":
    main()
