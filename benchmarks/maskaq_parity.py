"""MaskAQ reference fixtures: the authors' generator, synthesis step, quantizers and fine-tuning step on a
small random-init DeiT (docs/methods.md, MaskAQ).

    python benchmarks/maskaq_parity.py --authors /tmp/maskaq --out tests/harness/fixtures/maskaq_parity \
        [--deps /tmp/maskaq_deps] [--seed 0]

``--authors`` is an extracted snapshot of github.com/hfutqian/MaskAQ (the folder holding ``MaskAQ/``). Its
modules are imported from there and called; nothing of them is copied. ``--deps`` is a folder that
``pip install --target`` filled with ``einops`` and ``pyhocon``, which their modules import and the harness's
venv lacks. The shims, all undone afterwards, stand in for a GPU, ImageNet and their files on disk:

- ``Tensor.cuda`` / ``Module.cuda`` return their receiver, ``torch.cuda.device_count`` answers 1 (their
  ``data_parallel`` asserts a GPU), ``torch.tensor(..., device='cuda')`` lands on the CPU;
- their attention forward takes ``(x)``; the installed timm's blocks also pass ``attn_mask=None,
  is_causal=False``: the bound forward is wrapped (``parity_kit.without_mask``);
- their ``generate`` saves each batch with ``torch.save``: it is recorded instead of written; its
  optimizer, augmentations, roll offsets, token-mask drop and entropy row subsample are recorded as drawn;
- ``Trainer.train`` reads the merged synthetic set with ``torch.load``: the fixture's batch is written to a
  scratch folder as their ``TensorDataset`` (and read back with ``weights_only=False``); the work folder is
  a scratch folder, since ``train`` creates ``./gen_images_raw``.

Their options come from their own parser and ``imagenet_deit_s_16_224.hocon`` (``main.main`` runs with the
``train.sh`` arguments and a stand-in ``ExperimentDesign`` that keeps the options); only ``img_size`` (the
fixture's 28 px, for their fine-tuning augmentations), ``batchSize``/``num_samples`` (the fixture's batch),
``nThreads`` (0) and ``dataset_path`` (the scratch folder) are changed.

The model: timm ``VisionTransformer(img_size=28, patch_size=2, embed_dim=32, depth=2, num_heads=2)`` with
1000 classes: 14 x 14 patches, because their head-similarity loss slices tokens 1:197 and folds them 14 x 14,
and 1000 classes because their generator draws labels in [0, 1000). Head dimension 16: timm's 1/sqrt(d) is a
power of two. Float32 init (seeded), run in float64.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Iterator

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_kit import authors_commit, smooth_images, without_mask  # noqa: E402

MODEL_KWARGS = dict(img_size=28, patch_size=2, embed_dim=32, depth=2, num_heads=2, num_classes=1000)
# train.sh's arguments (README's example has one argument too few: its 6th lands on --head_dist_coef, so
# that one is left at the parser's default, 10.0); --qw/--qa are set per fixture.
TRAIN_SH_ARGS = ["--id", "0", "--lrs", "0.001", "--lr_policy", "multi_step", "--lr_step", "[50,100]",
                 "--aq_mode", "lsq", "--bs", "16"]
BITS = {"w4a4": (4, 4), "w4a8": (4, 8)}
SYNTHESIS_ITERATIONS = 4
BATCH_GEN, BATCH_TUNE = 2, 4


@contextlib.contextmanager
def cpu_shims() -> Iterator[None]:
    original_tensor = torch.tensor

    def tensor(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return original_tensor(*args, **kwargs)

    saved = torch.Tensor.cuda, nn.Module.cuda, torch.cuda.device_count, torch.tensor
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.device_count = lambda: 1
    torch.tensor = tensor
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda, torch.cuda.device_count, torch.tensor = saved


def spread_init(model: nn.Module) -> nn.Module:
    """Weights drawn wider than timm's std-0.02 init: with it, attention is near uniform and the heads'
    outputs vary far less than their fine-tuning loss's C2 = 0.03^2, so that loss would only show its eps."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("cls_token", "pos_embed"):
                p.normal_(0, 0.5)
            elif p.dim() >= 2:
                p.normal_(0, p[0].numel() ** -0.5)
            elif name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.normal_(1, 0.1)
            else:
                p.normal_(0, 0.05)
    return model


def authors_options(authors: Path, qw: int, qa: int):
    """Their ``Option`` as ``main.main`` builds it from ``train.sh``'s arguments."""
    import main as authors_main
    kept = {}

    class KeepOptions:
        def __init__(self, option):
            kept["option"] = option

        def run(self):
            pass

    saved = authors_main.ExperimentDesign, sys.argv
    authors_main.ExperimentDesign = KeepOptions
    sys.argv = ["main.py", "--conf_path", str(authors / "MaskAQ" / "imagenet_deit_s_16_224.hocon"),
                "--qw", str(qw), "--qa", str(qa), *TRAIN_SH_ARGS]
    try:
        authors_main.main()
    finally:
        authors_main.ExperimentDesign, sys.argv = saved
    return kept["option"]


def models(weights: dict, settings):
    """FP teacher and quantized student as their ``ExperimentDesign._replace`` prepares them, in float64."""
    import main as authors_main
    student = VisionTransformer(**MODEL_KWARGS).eval()
    student.load_state_dict(weights)
    student.double()
    teacher = copy.deepcopy(student)
    holder = types.SimpleNamespace(model=student, model_teacher=teacher, settings=settings)
    authors_main.ExperimentDesign._replace(holder)
    for model in (student, teacher):
        for module in model.modules():
            if isinstance(module, Attention) and hasattr(module, "matmul1"):
                module.forward = types.MethodType(without_mask(module.forward), module)
    return teacher, student


def quantizer_states(student) -> list[dict]:
    from quant_utils.quant_modules import QuantAct_lsq
    return [{"name": name, "bits": m.activation_bit, "full_precision": bool(m.full_precision_flag),
             "initialised": bool(m.init_flag.item()), "signed": int(m.signed.item()),
             "alpha": m.alpha.item(), "zero_point": m.zero_point.item(), "g_scale": getattr(m, "g_scale", None)}
            for name, m in student.named_modules() if isinstance(m, QuantAct_lsq)]


def generator_terms(gen, teacher, student, images, labels, ratio, prefix, tensors, fp_only_too: bool) -> dict:
    """Each loss term of their ``generate`` on fixed images (no jitter or augmentation) and its gradient."""
    fp_maps, q_maps = [], []
    handles = [m.matmul1.register_forward_hook(lambda mod, i, o: fp_maps.append(o))
               for m in teacher.modules() if isinstance(m, Attention)]
    handles += [m.matmul1.register_forward_hook(lambda mod, i, o: q_maps.append(o))
                for m in student.modules() if isinstance(m, Attention)]
    x = images.clone().requires_grad_(True)
    logits = teacher(x)
    student(x)
    for h in handles:
        h.remove()
    mask = gen.generate_attention_mask(fp_maps, ratio=ratio, is_swin=False)
    torch.manual_seed(1)
    dropped = gen.stochastic_mask_drop(mask, drop_prob=0.30, min_keep=1)
    drawn = []
    original_randperm = torch.randperm

    def randperm(n, *a, **k):
        drawn.append(original_randperm(n, *a, **k))
        return drawn[-1]

    torch.manual_seed(2)
    torch.randperm = randperm
    try:
        entropy = gen.attention_entropy_loss_similarity(fp_maps, is_swin=False)
    finally:
        torch.randperm = original_randperm
    terms = {
        "ssim": (1 - gen.ssim_loss_att_map(fp_maps, mode="full_map") ** 2).mean(),
        "class": F.cross_entropy(logits, labels),
        "tv": gen.get_image_prior_losses(x),
        "att_diff": gen.masked_attention_difference_loss(fp_maps, q_maps, dropped, is_swin=False),
        "entropy": entropy,
        "entropy_all_rows": gen.attention_entropy_loss_similarity(fp_maps, patch_subsample_k=10**9),
    }
    weights = {"ssim": 1.0, "class": 1.0, "tv": 2.5e-5, "att_diff": 0.1, "entropy": 1.0}
    terms["total"] = sum(weights[k] * terms[k] for k in weights)
    values = {}
    for name, term in terms.items():
        values[name] = term.item()
        if fp_only_too or name in ("att_diff", "total"):
            tensors[f"{prefix}grad_{name}"] = torch.autograd.grad(term, x, retain_graph=True)[0].detach()
    tensors[f"{prefix}mask_topk"] = mask
    tensors[f"{prefix}mask_dropped"] = dropped
    tensors[f"{prefix}entropy_rows"] = torch.stack(drawn)[:, :64]
    if fp_only_too:
        tensors[f"{prefix}fp_cls_attention_logits"] = torch.stack([m.mean(1)[:, 0, 1:] for m in fp_maps]).detach()
    return {"values": values, "coefficients": weights, "mask_ratio": ratio, "drop_prob": 0.3,
            "entropy_rows_order": "layer-major then image, 64 of 196 rows each"}


def synthesis_run(gen, teacher, student, network, tensors) -> dict:
    """Their ``generate`` for one batch of ``SYNTHESIS_ITERATIONS`` steps, its random draws recorded."""
    from image_gen_aug_utils import ColorJitter, GaussianNoise
    record = {"images_before_step": [], "saved": {}, "shifts": [], "noise": [], "jitter_mean": [],
              "jitter_std": [], "mask": [], "entropy_rows": [], "terms": []}
    AdamW = torch.optim.AdamW

    class RecordingAdamW(AdamW):
        def zero_grad(self, *a, **k):
            record["images_before_step"].append(self.param_groups[0]["params"][0].detach().clone())
            return super().zero_grad(*a, **k)

    originals = {n: getattr(gen, n) for n in ("stochastic_mask_drop", "attention_entropy_loss_similarity",
                                             "ssim_loss_att_map", "masked_attention_difference_loss",
                                             "get_image_prior_losses")}
    noise_forward, jitter_forward, roll, save, randperm = (GaussianNoise.forward, ColorJitter.forward,
                                                           torch.roll, torch.save, torch.randperm)

    def wrap(name):
        def call(*a, **k):
            out = originals[name](*a, **k)
            if name == "stochastic_mask_drop":
                record["mask"].append(out.clone())
            elif name != "attention_entropy_loss_similarity":
                record["terms"].append((name, (out if name != "ssim_loss_att_map" else (1 - out ** 2).mean()).item()))
            return out
        return call

    def entropy(*a, **k):
        drawn = []
        torch.randperm = lambda n, *ra, **rk: drawn.append(randperm(n, *ra, **rk)) or drawn[-1]
        try:
            out = originals["attention_entropy_loss_similarity"](*a, **k)
        finally:
            torch.randperm = randperm
        record["entropy_rows"].append(torch.stack(drawn)[:, :64])
        record["terms"].append(("attention_entropy_loss_similarity", out.item()))
        return out

    def noise(self, img):
        out = noise_forward(self, img)
        record["noise"].append(self.std.clone())
        return out

    def jitter(self, img):
        out = jitter_forward(self, img)
        record["jitter_mean"].append(self.mean.clone())
        record["jitter_std"].append(self.std.clone())
        return out

    def rolled(x, shifts, dims):
        record["shifts"].append(list(shifts))
        return roll(x, shifts=shifts, dims=dims)

    logits = []
    hook = teacher.register_forward_hook(lambda m, i, o: logits.append(o.detach()))
    for name in originals:
        setattr(gen, name, wrap(name) if name != "attention_entropy_loss_similarity" else entropy)
    torch.optim.AdamW, GaussianNoise.forward, ColorJitter.forward = RecordingAdamW, noise, jitter
    torch.roll = rolled
    torch.save = lambda obj, path: record["saved"].__setitem__(os.path.basename(path), obj)
    try:
        gen.generate(epoch=0, model=network, model_origin=teacher, model_quant=student, batch_size=BATCH_GEN,
                     iter=SYNTHESIS_ITERATIONS, num_images=BATCH_GEN, save_dir=".")
    finally:
        for name, fn in originals.items():
            setattr(gen, name, fn)
        torch.optim.AdamW, GaussianNoise.forward, ColorJitter.forward = AdamW, noise_forward, jitter_forward
        torch.roll, torch.save = roll, save
        hook.remove()
    tensors["synthesis.initial_images"] = record["images_before_step"][0]
    tensors["synthesis.images_after_step1"] = record["images_before_step"][1]
    tensors["synthesis.images_final"] = record["saved"]["0_images.pt"]
    tensors["synthesis.labels"] = record["saved"]["0_class_labels.pt"]
    tensors["synthesis.noise"] = torch.stack(record["noise"])
    tensors["synthesis.jitter_mean"] = torch.stack(record["jitter_mean"])
    tensors["synthesis.jitter_std"] = torch.stack(record["jitter_std"])
    tensors["synthesis.mask_dropped"] = torch.stack(record["mask"])
    tensors["synthesis.entropy_rows"] = torch.stack(record["entropy_rows"])
    per_step = [dict(record["terms"][i * 4:(i + 1) * 4]) for i in range(SYNTHESIS_ITERATIONS)]
    names = {"ssim_loss_att_map": ("ssim", 1.0), "masked_attention_difference_loss": ("att_diff", 0.1),
             "get_image_prior_losses": ("tv", 2.5e-5), "attention_entropy_loss_similarity": ("entropy", 1.0)}
    labels = record["saved"]["0_class_labels.pt"]
    for step, terms in enumerate(per_step):
        terms = {names[k][0]: v for k, v in terms.items()}
        terms["class"] = F.cross_entropy(logits[step], labels).item()
        terms["total"] = terms["class"] + sum(terms[n] * w for n, w in names.values())
        per_step[step] = terms
    return {"iterations": SYNTHESIS_ITERATIONS, "batch": BATCH_GEN, "roll_shifts": record["shifts"],
            "terms_per_step": per_step,
            "note": "augmentation order per step: roll(shifts), + noise[step] (B,3,1,1), "
                    "(x - jitter_mean[step]) / jitter_std[step]; AdamW lr 0.1 cosine over the iterations to "
                    "1e-3, clamp to the normalised [0, 1] box after each step"}


def tuning_step(trainer_module, settings, teacher, student, images, labels, workdir, tensors, prefix) -> dict:
    """One optimizer step of their ``Trainer.train`` (epoch 2, the first that steps: warm-up 5 - 3)."""
    dataset = torch.utils.data.TensorDataset(images, labels)
    name = (f"{settings.network}_ssim_{settings.img_opt_ssim}_class_{settings.img_opt_cls}"
            f"_tv_{settings.img_opt_tv}_merged.pt")
    torch.save(dataset, workdir / name)
    trainer = trainer_module.Trainer(model=student, model_teacher=teacher, train_loader=None, test_loader=None,
                                     lr_master_S=_lr_master(settings), settings=settings, logger=None)
    captured = {}
    transforms = trainer.data_transforms
    trainer.data_transforms = lambda x: captured.setdefault("augmented", transforms(x))
    forward = trainer.forward

    def recording_forward(x, teacher_outputs, labels=None):
        output, loss = forward(x, teacher_outputs, labels)
        captured.update(teacher_logits=teacher_outputs, student_logits=output.detach(), kd=loss.item(),
                        labels=labels)
        return output, loss

    trainer.forward = recording_forward
    step = trainer.optimizer_S.step

    def recording_step(*a, **k):
        captured["grads"] = {n: p.grad.detach().clone() for n, p in student.named_parameters() if p.grad is not None}
        captured["before"] = {n: p.detach().clone() for n, p in student.named_parameters()}
        captured["lr"] = trainer.optimizer_S.param_groups[0]["lr"]
        return step(*a, **k)

    trainer.optimizer_S.step = recording_step
    for _ in range(2):  # epochs 0 and 1 step the cosine schedule and nothing else
        trainer.scheduler.step()
    load = torch.load
    torch.load = lambda path, *a, **k: load(path, *a, **{**k, "weights_only": False})
    try:
        _, total, _ = trainer.train(epoch=2)
    finally:
        torch.load = load
    head = trainer_module.ssim_dist_loss_masked(trainer.matmul2_output, trainer.matmul2_output_quant,
                                                mask_proportion=0.1, weight_high=2.0, weight_low=1.0,
                                                distance=settings.head_dist_distance)
    tensors[f"{prefix}augmented_images"] = captured["augmented"]
    tensors[f"{prefix}labels"] = captured["labels"]
    tensors[f"{prefix}teacher_logits"] = captured["teacher_logits"]
    tensors[f"{prefix}student_logits"] = captured["student_logits"]
    for n, g in captured["grads"].items():
        tensors[f"{prefix}grad.{n}"] = g.float()  # float64 computed, float32 stored (size); digest of float64
    deltas = {n: (p.detach() - captured["before"][n]) for n, p in student.named_parameters()}
    digest = hashlib.sha256(b"".join(g.numpy().tobytes() for _, g in sorted(captured["grads"].items())))
    return {"kd_loss": captured["kd"], "head_dist_loss": head.item(), "total_loss": total.item(),
            "head_dist_coef": settings.head_dist_coef, "temperature": settings.temperature,
            "kd_scale": settings.kd_scale, "ce_scale": settings.ce_scale, "alpha": settings.alpha,
            "lr_used": captured["lr"], "momentum": settings.momentum, "weight_decay": settings.weightDecay,
            "nesterov": True, "grads_sha256_float64_sorted_by_name": digest.hexdigest(),
            "param_delta_examples": {n: d.reshape(-1)[:3].tolist() for n, d in sorted(deltas.items())[:12]},
            "parameters_with_grad": sorted(captured["grads"])}


def _lr_master(settings):
    import utils as authors_utils
    lr_master = authors_utils.LRPolicy(settings.lr_S, settings.nEpochs, settings.lrPolicy_S)
    lr_master.set_params(params_dict={"step": settings.step_S, "decay_rate": settings.decayRate_S})
    return lr_master


def quantizer_cases(tensors) -> dict:
    """Their activation LSQ quantizer (init call and a later call) and weight quantizers on fixed tensors."""
    from quant_utils.quant_modules import QuantAct_lsq, Quant_Linear
    from quant_utils.quant_utils import SymmetricQuantFunction
    g = torch.Generator().manual_seed(5)
    inputs = {"signed": (torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g) * 1.5),
              "unsigned": (torch.rand(2, 5, 8, generator=g) + 0.01, torch.rand(2, 5, 8, generator=g) * 1.2 + 0.01)}
    weight = torch.randn(6, 8, generator=g) * 0.2
    upstream = torch.randn(2, 5, 8, generator=g)
    upstream_w = torch.randn(6, 8, generator=g)
    tensors.update({"quant.act_signed_init_input": inputs["signed"][0], "quant.act_signed_input": inputs["signed"][1],
                    "quant.act_unsigned_init_input": inputs["unsigned"][0],
                    "quant.act_unsigned_input": inputs["unsigned"][1], "quant.upstream": upstream,
                    "quant.weight": weight, "quant.upstream_weight": upstream_w})
    meta = {}
    for bits in (4, 8):
        for kind, (first, second) in inputs.items():
            for g_scale in (1.0, 0.01):
                key = f"act_{kind}_b{bits}_g{g_scale}"
                q = QuantAct_lsq(bits, lsq_g_scale=g_scale)
                case = {}
                for call, x in (("init", first), ("later", second)):
                    x = x.clone().requires_grad_(True)
                    q.zero_grad()
                    out = q(x)
                    (out * upstream).sum().backward()
                    tensors[f"quant.{key}.{call}.output"] = out.detach()
                    tensors[f"quant.{key}.{call}.grad_input"] = x.grad
                    case[call] = {"grad_alpha": q.alpha.grad.item(), "grad_zero_point": q.zero_point.grad.item()}
                case.update(alpha_init=q.alpha.item(), zero_point_init=q.zero_point.item(), signed=int(q.signed.item()),
                            g_scale=q.g_scale)
                meta[key] = case
        w = weight.clone().requires_grad_(True)
        out = SymmetricQuantFunction.apply(w, bits, w.detach().min(dim=1).values, w.detach().max(dim=1).values)
        (out * upstream_w).sum().backward()
        tensors[f"quant.weight_minmax_b{bits}.output"] = out.detach()
        tensors[f"quant.weight_minmax_b{bits}.grad_input"] = w.grad
        layer = Quant_Linear(bits, 32, weight_q_mode="lsq", act_q_mode="lsq")
        linear = nn.Linear(8, 6)
        linear.weight.data.copy_(weight)
        layer.set_param(linear)
        out = layer._lsquant(layer.weight)
        (out * upstream_w).sum().backward()
        tensors[f"quant.weight_lsq_b{bits}.output"] = out.detach()
        tensors[f"quant.weight_lsq_b{bits}.grad_input"] = layer.weight.grad
        tensors[f"quant.weight_lsq_b{bits}.grad_alpha"] = layer.alpha.grad
        meta[f"weight_lsq_b{bits}"] = {"alpha_init": layer.alpha[0].item(), "grad_scale": layer.grad_scale,
                                       "q_min": layer.q_min, "q_max": layer.q_max}
    meta["upstream"] = "loss = sum(output * upstream); the same quantizer object serves 'init' then 'later'"
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=Path, required=True, help="extracted github.com/hfutqian/MaskAQ")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--deps", type=Path, default=Path("/tmp/maskaq_deps"), help="einops, pyhocon")
    parser.add_argument("--commit", default=None, help="the authors' commit, when --authors is no git checkout")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    authors = args.authors.resolve()
    sys.path[:0] = [str(authors / "MaskAQ"), str(args.deps)]
    commit = args.commit or authors_commit(authors)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="maskaq_parity_") as folder:
        os.chdir(folder)
        try:
            with cpu_shims():
                write(authors, commit, args.seed, out, Path(folder))
        finally:
            os.chdir(home)


def write(authors: Path, commit: str, seed: int, out: Path, workdir: Path) -> None:
    import hydra_image_gen_ssim_att_map as gen
    import trainer as trainer_module
    torch.manual_seed(seed)
    weights = {k: v.clone() for k, v in spread_init(VisionTransformer(**MODEL_KWARGS)).state_dict().items()}
    images_g = torch.Generator().manual_seed(seed)
    size = MODEL_KWARGS["img_size"]
    init_images = smooth_images(BATCH_TUNE, size, images_g).double()
    gen_images = smooth_images(BATCH_GEN, size, images_g).double()
    tune_images = smooth_images(BATCH_TUNE, size, images_g).double()
    gen_labels = torch.tensor([3, 999])
    tune_labels = torch.tensor([1, 7, 500, 998])
    torch.set_default_dtype(torch.float64)
    try:
        tensors = {"lsq_init_images": init_images, "generator_images": gen_images, "generator_labels": gen_labels,
                   "tuning_images": tune_images, "tuning_labels": tune_labels}
        meta = {"authors_repository": "https://github.com/hfutqian/MaskAQ", "authors_commit": commit,
                "timm_class": "VisionTransformer", "kwargs": MODEL_KWARGS, "seed": seed, "dtype": "float64",
                "torch": torch.__version__, "timm": timm.__version__,
                "produced_by": "benchmarks/maskaq_parity.py", "train_sh_args": TRAIN_SH_ARGS, "bits": {}}
        for label, (qw, qa) in BITS.items():
            settings = authors_options(authors, qw, qa)
            from timm.data import resolve_data_config
            settings.data_config = resolve_data_config(vars(settings), model=VisionTransformer(**MODEL_KWARGS))
            settings.img_size, settings.nThreads = size, 0
            settings.batchSize = settings.num_samples = BATCH_TUNE
            settings.dataset_path = str(workdir)
            entry = {"options": {k: v for k, v in vars(settings).items()
                                 if isinstance(v, (int, float, str, bool, list)) and k != "conf"}}
            entry["options"]["dataset_path"] = "<scratch folder>"
            teacher, student = models(weights, settings)
            with torch.no_grad():
                student(init_images)  # LSQ's data-dependent init (their first forward is the generator's)
            entry["lsq_quantizers_after_init"] = quantizer_states(student)
            torch.manual_seed(seed + 10)
            entry["generator_terms"] = generator_terms(gen, teacher, student, gen_images, gen_labels, 0.5,
                                                       f"{label}.generator.", tensors,
                                                       fp_only_too=label == "w4a4")
            if label == "w4a4":
                torch.manual_seed(seed + 20)
                import random
                random.seed(seed + 20)
                entry["synthesis"] = synthesis_run(gen, teacher, student, settings.network, tensors)
            teacher, student = models(weights, settings)
            with torch.no_grad():
                student(init_images)
            torch.manual_seed(seed + 30)
            import numpy as np
            np.random.seed(seed + 30)
            entry["tuning_step"] = tuning_step(trainer_module, settings, teacher, student, tune_images, tune_labels,
                                               workdir, tensors, f"{label}.tuning.")
            meta["bits"][label] = entry
        quantizers = {}
        meta_q = {"authors_repository": meta["authors_repository"], "authors_commit": commit, "dtype": "float64",
                  "torch": torch.__version__, "produced_by": meta["produced_by"],
                  "cases": quantizer_cases(quantizers)}
    finally:
        torch.set_default_dtype(torch.float32)
    save_file({k: v.contiguous() for k, v in {**tensors, **{f"weights.{k}": v for k, v in weights.items()}}.items()},
              str(out / "deit_28px.safetensors"))
    (out / "deit_28px.json").write_text(json.dumps(meta, indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in quantizers.items()}, str(out / "lsq_quantizers.safetensors"))
    (out / "lsq_quantizers.json").write_text(json.dumps(meta_q, indent=1) + "\n")
    print(f"wrote {out}/deit_28px.* and lsq_quantizers.*")


if __name__ == "__main__":
    main()
