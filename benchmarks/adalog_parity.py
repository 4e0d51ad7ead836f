"""AdaLog reference parity: the ``adalog`` calibrator against the authors' own code (docs/methods.md, AdaLog).

    python benchmarks/adalog_parity.py --authors /path/to/AdaLog [--models deit_tiny,swin_tiny] [--bits w4a4,w3a3]
        [--calib-images 32] [--eval-images 64] [--seed 0] [--dtype float32]
    python benchmarks/adalog_parity.py --authors /path/to/AdaLog [--authors-commit HASH] \
        --write-fixtures tests/harness/fixtures/adalog_parity [--calib-images 8] [--fixture-suffix SUFFIX]

``--authors`` is a checkout (or ``git archive``) of github.com/GoatWu/AdaLog; an archive's commit, which
``git get-tar-commit-id`` reads from the archive file, is given with ``--authors-commit``. Its
``test_quant.py`` is imported from there and its ``main()`` runs unchanged with ``--calibrate`` and ``configs/{a}bit.py`` (4bit.py for other widths; bits overridden by
``--w_bit/--a_bit/--s_bit``); nothing of it is copied. These shims stand in for what needs ImageNet, the
network or a GPU, and nothing else:

- ``timm.create_model`` returns our random-init timm model (seeded) instead of loading a checkpoint;
- ``mydatasets.ViTImageNetLoaderGenerator`` gives one loader with the calibration images and one with the
  evaluation images (labels 0); ``validate`` records the quantized model's logits instead of an accuracy;
- their code runs on CUDA only: ``Tensor.cuda`` returns the tensor itself, ``torch.cuda.is_available`` says
  yes and ``torch.cuda.get_device_properties`` reports 8 GiB (the harness's ``device_memory_gib`` default),
  which only decides how many candidates one pass scores; ``--device cpu``;
- their ViT attention forward takes ``(x)`` only, while the installed timm's blocks also pass
  ``attn_mask=None, is_causal=False``: after their ``wrap_modules_in_net`` each such forward is bound through
  ``parity_kit.without_mask`` (their Swin window-attention forward takes ``(x, mask=None)`` as timm calls it);
  their README pins timm 0.9.2, whose ViT and Swin have the installed timm's layout (``q_norm``,
  ``_get_rel_pos_bias``, patch merging on (B, H/2, W/2, 4C) maps), so none of ``repq_parity.py``'s shims
  for timm 0.4.12 is needed;
- ``torch.set_default_dtype`` is the run's dtype while their code runs: their quantized layers are built in
  the default dtype and copy the timm weights into it;
- the run writes its log and checkpoint under a temporary working directory.

The harness side: the same weights, ``standard`` profile, calibrator ``adalog`` on the same images, logits on
the same evaluation images. Printed per model and bit width: the logits' max abs difference and argmax agreement,
and the largest relative difference of all quantizer parameters (weight and activation scales, zero points,
log bases), paired in calibration order.

``--write-fixtures DIR`` runs the small configurations of ``parity_kit.SMALL_FIXTURES`` (``--models`` picks
some) in float64 with 8 calibration images (``--calib-images``) and 4 evaluation images at ``--bits``, with
``--search-rounds`` / ``--steps`` on both sides, and writes ``NAME[SUFFIX].safetensors`` (float32 timm weights,
the images, the authors' float64 logits) and ``NAME[SUFFIX].json`` (configuration, search settings, the CPU
kernels, the authors' commit, every quantizer's parameters in calibration order), which
``tests/harness/test_adalog_parity.py`` checks.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Iterator

import timm
import torch
from timm.models.vision_transformer import Attention
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.model.instrument import get_point  # noqa: E402
from harness.plugin.method import CalibrationContext, CalibrationSet  # noqa: E402
from harness.quant.bits import parse_bits  # noqa: E402
from harness.quant.convert import QuantConfig, quantize_model  # noqa: E402
from parity_kit import (FULL_SIZE, SMALL_FIXTURES, authors_commit, parity_parser, save_fixture,  # noqa: E402
                        smooth_images, timm_class, twin_models, without_mask)
from methods.adalog.calibrator import AdaLogCalibrator, calibration_units  # noqa: E402

FAKE_DEVICE_MEMORY = 8 * 2 ** 30


@functools.lru_cache(maxsize=None)
def workdir() -> Path:
    """One folder for every run of this process (their module makes its log directory once, on import), removed
    at exit: importing this file (the tests do) makes none."""
    folder = Path(tempfile.mkdtemp(prefix="adalog_parity_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@contextlib.contextmanager
def shims(checkout: Path, model: nn.Module, calib: torch.Tensor, evaluation: torch.Tensor, captured: dict,
          dtype: torch.dtype) -> Iterator[types.ModuleType]:
    """The replacements the module docstring lists; yields the authors' ``test_quant`` module."""
    previous_dir, previous_dtype = os.getcwd(), torch.get_default_dtype()
    os.chdir(workdir())
    sys.path.insert(0, str(checkout))
    import test_quant as authors
    import utils.datasets as datasets

    class Loaders:
        def __init__(self, *args, **kwargs):
            pass

        def val_loader(self):
            return [(evaluation, torch.zeros(len(evaluation), dtype=torch.long))]

        def calib_loader(self, num=None, batch_size=None, seed=None):
            return [(calib, torch.zeros(len(calib), dtype=torch.long))]

    def validate(val_loader, q_model, criterion, print_freq=10, device=None):
        with torch.no_grad():
            captured["logits"] = q_model(evaluation)
        captured["model"] = q_model
        return 0.0, 0.0, 0.0

    def wrap(model, cfg, reparam=False):
        wrapped = original_wrap(model, cfg, reparam=reparam)
        for module in wrapped.modules():
            if isinstance(module, Attention) and hasattr(module, "matmul1"):
                module.forward = types.MethodType(without_mask(module.forward), module)
        return wrapped

    properties = types.SimpleNamespace(total_memory=FAKE_DEVICE_MEMORY)
    original_wrap = authors.wrap_modules_in_net
    saved = (timm.create_model, datasets.ViTImageNetLoaderGenerator, authors.validate, authors.wrap_modules_in_net,
             torch.Tensor.cuda, torch.cuda.is_available, torch.cuda.get_device_properties)
    timm.create_model = lambda *args, **kwargs: model
    datasets.ViTImageNetLoaderGenerator = Loaders
    authors.validate, authors.wrap_modules_in_net = validate, wrap
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.cuda.is_available = lambda: True
    torch.cuda.get_device_properties = lambda index: properties
    torch.set_default_dtype(dtype)
    try:
        yield authors
    finally:
        (timm.create_model, datasets.ViTImageNetLoaderGenerator, authors.validate, authors.wrap_modules_in_net,
         torch.Tensor.cuda, torch.cuda.is_available, torch.cuda.get_device_properties) = saved
        torch.set_default_dtype(previous_dtype)
        os.chdir(previous_dir)


def _values(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().reshape(-1)]


def authors_parameters(model: nn.Module) -> list[dict]:
    """Every quantizer's parameters in the authors' calibration order (module order, matmuls after their Linears)."""
    found = []
    for name, module in model.named_modules():
        if not hasattr(module, "calibrated"):
            continue
        entry = {"name": name}
        if hasattr(module, "w_quantizer"):
            entry.update(weight_scale=_values(module.w_quantizer.scale), weight_zero_point=_values(module.w_quantizer.zero_point))
        if hasattr(module, "a_quantizer") and isinstance(module, nn.Linear):
            quantizer = module.a_quantizer
            entry.update(input_scale=_values(quantizer.scale))
            if hasattr(quantizer, "q"):
                entry.update(input_log_base=_values(quantizer.q))
            else:
                entry.update(input_zero_point=_values(quantizer.zero_point))
        if hasattr(module, "A_quantizer"):
            if hasattr(module.A_quantizer, "q"):
                entry.update(a_log_base=_values(module.A_quantizer.q))
            else:
                entry.update(a_scale=_values(module.A_quantizer.scale), a_zero_point=_values(module.A_quantizer.zero_point))
            entry.update(b_scale=_values(module.B_quantizer.scale), b_zero_point=_values(module.B_quantizer.zero_point))
        found.append(entry)
    return found


def harness_parameters(qmodel: nn.Module) -> list[dict]:
    """As :func:`authors_parameters`, from the calibrated harness model."""
    names = {module: name for name, module in qmodel.named_modules()}
    found = []
    for kind, module in calibration_units(qmodel):
        entry = {"name": names[module]}
        if kind == "layer":
            if getattr(module, "weight_zero_point", None) is not None:
                entry.update(weight_scale=_values(module.weight_scale), weight_zero_point=_values(module.weight_zero_point))
            point = get_point(module, "in")
            if isinstance(module, nn.Linear) and point is not None:
                entry.update(input_scale=_values(point.scale))
                if point.kind == "adalog":
                    entry.update(input_log_base=_values(point.log_base))
                else:
                    entry.update(input_zero_point=_values(point.zero_point))
        else:
            a, b = (get_point(module, n) for n in (("q", "k") if kind == "qk" else ("attn", "v")))
            if a.kind == "adalog":
                entry.update(a_log_base=_values(a.log_base))
            else:
                entry.update(a_scale=_values(a.scale), a_zero_point=_values(a.zero_point))
            entry.update(b_scale=_values(b.scale), b_zero_point=_values(b.zero_point))
        found.append(entry)
    return found


def parameter_gaps(theirs: list[dict], ours: list[dict]) -> tuple[float, int]:
    """(largest relative difference of any parameter, number of entries whose keys differ)."""
    gap, mismatched = 0.0, 0
    for t, o in zip(theirs, ours):
        if set(t) != set(o):
            mismatched += 1
            continue
        for key in t:
            if key == "name":
                continue
            for a, b in zip(t[key], o[key]):
                gap = max(gap, abs(a - b) / max(abs(a), 1e-12))
    return gap, mismatched + abs(len(theirs) - len(ours))


def reduced_config(checkout: Path, bits: int, rounds: int, steps: int) -> Path:
    """A config module deriving from the authors' ``configs/{bits}bit.py`` (4bit.py where they have none; their
    head input bits ``qhead_a_bit`` come from it) with ``rounds`` search rounds and ``steps`` FPCS steps."""
    base = checkout / "configs" / f"{bits}bit.py"
    base = base if base.exists() else checkout / "configs" / "4bit.py"
    # a module name of its own: their main() imports the config by name, and Python keeps the first import
    path = Path(tempfile.mkdtemp(prefix="config_", dir=workdir())) / f"parity_config_w{bits}_r{rounds}_s{steps}.py"
    path.write_text(f"import importlib.util\nspec = importlib.util.spec_from_file_location('base', "
                    f"{str(base)!r})\nbase = importlib.util.module_from_spec(spec)\n"
                    f"spec.loader.exec_module(base)\n\n\nclass Config(base.Config):\n    def __init__(self):\n"
                    f"        super().__init__()\n        self.search_round = {rounds}\n        self.steps = {steps}\n")
    return path


def run(name: str, kwargs: dict, checkout: Path, bits: str, calib: torch.Tensor, evaluation: torch.Tensor, seed: int,
        dtype: torch.dtype, rounds: int = 3, steps: int = 6) -> dict:
    model, reference, weights = twin_models(name, kwargs, seed, dtype)
    calib, evaluation = calib.to(dtype), evaluation.to(dtype)
    spec = parse_bits(bits)
    captured: dict = {}
    with shims(checkout, reference, calib, evaluation, captured, dtype) as authors:
        args = authors.get_args_parser().parse_args(
            ["--model", "swin_tiny" if name.startswith("swin") else "deit_tiny", "--config",
             str(reduced_config(checkout, spec.act_bits, rounds, steps)), "--device", "cpu", "--seed", str(seed), "--calibrate",
             "--w_bit", str(spec.weight_bits), "--a_bit", str(spec.act_bits), "--s_bit", str(spec.act_bits)])
        authors.main(args)
    theirs = authors_parameters(captured["model"])
    qmodel = quantize_model(model, spec, QuantConfig()).to(dtype)
    AdaLogCalibrator(AdaLogCalibrator.Options(search_rounds=rounds, steps=steps)).calibrate(qmodel, CalibrationContext(
        fp_model=model, calibration=CalibrationSet(calib), bits=spec, seed=seed, device=torch.device("cpu"),
        batch_size=len(calib)))
    with torch.no_grad():
        logits = qmodel(evaluation)
    ours = harness_parameters(qmodel)
    reference_logits = captured["logits"]
    gap, mismatched = parameter_gaps(theirs, ours)
    difference = (logits - reference_logits).abs().max().item()
    agree = (logits.argmax(1) == reference_logits.argmax(1)).sum().item()
    print(f"\n== {name} {bits} {str(dtype).removeprefix('torch.')}: calibrated layers authors {len(theirs)}, "
          f"harness {len(ours)}, entries with other parameters {mismatched}")
    print(f"  parameters: max relative diff {gap:.2e}")
    print(f"  quantized logits: max abs diff {difference:.2e}, argmax agreement {agree}/{len(logits)}; "
          f"logit scale {reference_logits.abs().max().item():.3g}", flush=True)
    return {"weights": weights, "reference_logits": reference_logits, "parameters": theirs, "complete": mismatched == 0}


def write_fixtures(directory: Path, checkout: Path, commit: str, seed: int, names: list[str], bit_specs: list[str],
                   rounds: int, steps: int, calib_images: int = 8, suffix: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        kwargs = SMALL_FIXTURES[name]
        generator = torch.Generator().manual_seed(seed)
        calib = smooth_images(calib_images, kwargs["img_size"], generator)
        evaluation = smooth_images(4, kwargs["img_size"], generator)
        tensors = {"calibration_images": calib, "evaluation_images": evaluation}
        parameters = {}
        for bits in bit_specs:
            result = run(name, kwargs, checkout, bits, calib, evaluation, seed, torch.float64, rounds, steps)
            if not result["complete"]:
                raise SystemExit(f"{name} {bits}: the quantizer sets differ; no fixture written")
            tensors[f"authors_logits_{bits}"] = result["reference_logits"]
            parameters[bits] = result["parameters"]
        save_fixture(directory, name + suffix, tensors, result["weights"], {
            "authors_repository": "https://github.com/GoatWu/AdaLog", "authors_commit": commit,
            "timm_class": timm_class(name).__name__, "kwargs": kwargs, "seed": seed, "dtype": "float64",
            "search_rounds": rounds, "steps": steps, "capability": torch.backends.cpu.get_cpu_capability(),
            "produced_by": "benchmarks/adalog_parity.py --write-fixtures", "parameters_in_calibration_order": parameters})


def checkout_commit(checkout: Path, given: str | None, required: bool) -> str:
    """The authors' commit: the checkout's HEAD, else ``given`` (``--authors-commit``); one given must match a
    checkout's HEAD, and fixtures are written only with a known commit."""
    found = authors_commit(checkout)
    known = len(found) == 40 and all(c in "0123456789abcdef" for c in found)
    if given is not None:
        if not (len(given) == 40 and all(c in "0123456789abcdef" for c in given.lower())):
            raise SystemExit(f"--authors-commit {given}: not a full 40-digit commit hash")
        if known and found != given.lower():
            raise SystemExit(f"--authors-commit {given}, but {checkout} is at {found}")
        return given.lower()
    if required and not known:
        raise SystemExit(f"{checkout} is no git checkout: name its commit with --authors-commit")
    return found


def main() -> None:
    parser = parity_parser(__doc__.splitlines()[0], "github.com/GoatWu/AdaLog", None,
                           f"any of {', '.join([*FULL_SIZE, *SMALL_FIXTURES])} (default: deit_tiny; with "
                           f"--write-fixtures: {', '.join(SMALL_FIXTURES)})", "w4a4,w3a3", 64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--search-rounds", type=int, default=3, help="search_round of both sides (authors: 3)")
    parser.add_argument("--steps", type=int, default=6, help="FPCS steps of both sides (authors: 6)")
    parser.add_argument("--fixture-suffix", default="", help="with --write-fixtures: NAME+SUFFIX.json/.safetensors "
                        "(fixtures of other search settings or image counts beside the standard ones)")
    parser.add_argument("--authors-commit", help="the commit --authors holds where it is no git checkout (a "
                        "`git archive` tree: `git get-tar-commit-id < ARCHIVE.tar` prints it); recorded in the "
                        "fixtures")
    parser.set_defaults(calib_images=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    checkout = args.authors.resolve()
    commit = checkout_commit(checkout, args.authors_commit, required=bool(args.write_fixtures))
    print(f"authors' code: {checkout} at {commit}")
    if args.write_fixtures:
        write_fixtures(args.write_fixtures.resolve(), checkout, commit, args.seed,
                       args.models.split(",") if args.models else list(SMALL_FIXTURES), args.bits.split(","),
                       args.search_rounds, args.steps, args.calib_images or 8, args.fixture_suffix)
        return
    generator = torch.Generator().manual_seed(args.seed)
    configs = {**FULL_SIZE, **SMALL_FIXTURES}
    for name in (args.models or "deit_tiny").split(","):
        size = configs[name]["img_size"]
        calib = smooth_images(args.calib_images or 32, size, generator)
        evaluation = smooth_images(args.eval_images, size, generator)
        for bits in args.bits.split(","):
            run(name, configs[name], checkout, bits, calib, evaluation, args.seed, getattr(torch, args.dtype),
                args.search_rounds, args.steps)


if __name__ == "__main__":
    main()
