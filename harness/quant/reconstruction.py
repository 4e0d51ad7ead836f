"""Block reconstruction with learned weight rounding (AdaRound) and QDrop (docs/methods.md, APHQ-ViT,
Reconstruction), with a pluggable objective: MSE (BRECQ/QDrop), APHQ-ViT's average perturbation Hessian,
FIMA-Q's Fisher information (diagonal plus low rank).

The units, in forward order: the patch embedding, every transformer block, Swin's patch mergings and the
classifier head (KL divergence of the logits); each called with the further arguments its model passes it (an
mmdet Swin block's feature-map size), and judged by its tensor where it returns more (mmcv's patch embedding
and merging return the size too); with ``quantize=all``, a detector's FPN neck after them, its maps joined. Gradient-weighted objectives take their gradients of the task's
objective (:mod:`harness.quant.objectives`). For each unit: the FP model's input and output, the quantized
model's input (earlier units reconstructed); then ``iterations`` steps of Adam on the rounding variables of its
weights (lr 1e-3) and, with cosine decay, its activation scales (lr 4e-5), on a mini-batch whose input takes
each element from the quantized input with probability ``drop_prob``, else the FP one, while every activation
quantizer of the unit keeps each element quantized with that probability (QDrop). Rounding passes gradients
straight through. The rounding regularizer starts after ``warmup`` of the steps with an exponent decaying from
20 to 2. Afterwards the rounding is hard, written into the weights, and the scales are buffers again.

Random numbers (mini-batch permutation, then the input mix, then each quantizer's drop mask in call order, drawn
in the memory order of its input as ``torch.rand_like`` draws) come from one generator seeded per unit, so the
steps replay the authors' with their seed.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from harness.model.arch import BlockMlp, block_mlp, is_instrumented_block
from harness.quant.capture import LAYER_INPUT, LAYER_OUTPUT, Captured, Target, call_arguments, capture, tensors_of
from harness.quant.fake_quant import MIN_SCALE, round_ste
from harness.quant.learnable import learnable_scales
from harness.quant.modules import ActQuantizer, act_quantizers, unquantized_weights, weight_quantized_layers
from harness.quant.objectives import LogitDivergence, OutputObjective


class AdaRound(nn.Module):
    """Learned up-or-down rounding of a weight on its asymmetric per-channel grid (Nagel et al., 2020):
    h(α) = clamp(sigmoid(α)(ζ - γ) + γ, 0, 1), ζ = 1.1, γ = -0.1, α starting where h equals the fractional part."""

    zeta, gamma = 1.1, -0.1

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.scale, self.zero_point, self.bits = scale, zero_point, bits
        self.soft = True
        fraction = weight.detach() / scale - torch.floor(weight.detach() / scale)
        self.alpha = nn.Parameter(-torch.log((self.zeta - self.gamma) / (fraction - self.gamma) - 1))

    def rounding(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (self.zeta - self.gamma) + self.gamma, 0, 1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        up = self.rounding() if self.soft else (self.alpha >= 0).to(weight.dtype)
        levels = torch.clamp(torch.floor(weight / self.scale) + up + self.zero_point, 0, 2 ** self.bits - 1)
        return (levels - self.zero_point) * self.scale

    def regularizer(self, exponent: float) -> torch.Tensor:
        return (1 - ((self.rounding() - 0.5).abs() * 2).pow(exponent)).sum()

    @torch.no_grad()
    def hard_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return (torch.floor(weight / self.scale) + (self.alpha >= 0).to(weight.dtype)) * self.scale


def rounding_exponent(step: int, iterations: int, warmup: float, start: float = 20, end: float = 2) -> float:
    """The regularizer's exponent at (1-based) ``step``: ``start`` until ``warmup`` of the steps, then linear to ``end``."""
    begin = warmup * iterations
    if step < begin:
        return start
    return end + (start - end) * max(0.0, 1 - (step - begin) / (iterations - begin))


# ---- objectives --------------------------------------------------------------------------------------------

class ReconstructionLoss:
    """A reconstruction loss of a unit's quantized output against its FP output; ``prepare`` sees the unit
    before its steps (what it needs of the models), ``step`` may refresh it at a step. Normalization: APHQ-ViT's
    code scales every loss to 2 at the first step; FIMA-Q's divides each term by its value at the first step."""

    def prepare(self, unit: "Unit", context: "ReconstructionContext") -> None: ...

    def step(self, index: int, unit: "Unit", context: "ReconstructionContext") -> None: ...

    def batch(self, index: torch.Tensor) -> None:
        """The images (indices into the reconstruction set) of the next call."""

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _FirstStepNormalized(ReconstructionLoss):
    def __init__(self, factor: float = 2.0) -> None:
        self.factor, self.first = factor, None

    def raw(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, pred, target):
        value = self.raw(pred, target)
        if self.first is None:
            self.first = value.detach() if self.factor == 1 else value.item()
        return value * self.factor / self.first if self.factor != 1 else value / self.first


class OutputMSE(_FirstStepNormalized):
    """Σ over dimension 1 (tokens) of the squared error, mean over the rest (BRECQ/QDrop's code)."""

    def raw(self, pred, target):
        return (pred - target).abs().pow(2).sum(1).mean()


class LogitKL(_FirstStepNormalized):
    """The head: KL(softmax(target) ‖ softmax(pred)), batch mean; normalized (APHQ-ViT) or not (``factor`` None)."""

    def raw(self, pred, target):
        return F.kl_div(F.log_softmax(pred, dim=-1), F.softmax(target, dim=-1).detach(), reduction="batchmean")

    def __call__(self, pred, target):
        return self.raw(pred, target) if self.factor is None else super().__call__(pred, target)


class PerturbationHessian(_FirstStepNormalized):
    """APHQ-ViT: mean((pred - target)² ⊙ H), H = |g(+δ) - g(-δ)|, g the gradient of the task's objective with
    respect to the unit's output shifted by ±δ in the FP model; δ and whether H is averaged over the images or
    kept per image (normalized to mean 1) are the objective's (harness.quant.objectives)."""

    def __init__(self) -> None:
        super().__init__(2.0)
        self.hessian, self.index = None, None

    def prepare(self, unit, context):
        self.hessian = perturbation_hessian(context, unit.fp_module)

    def batch(self, index):
        self.index = index

    def raw(self, pred, target):
        hessian = self.hessian if self.hessian.shape[0] == 1 else self.hessian[self.index.to(self.hessian.device)]
        return ((pred - target).pow(2) * hessian.abs()).mean()


def perturbation_hessian(context: "ReconstructionContext", fp_module: nn.Module) -> torch.Tensor:
    """|g(+δ) - g(-δ)| at ``fp_module``'s output: averaged over the images (1, ...), or for a per-image
    objective per image (N, ...), each image's scaled to mean 1 (their detection code)."""
    output = context.output
    plus, minus = (context.output_gradients(fp_module, context.fp_model, shift=sign * output.perturbation)
                   for sign in (1, -1))
    difference = (plus - minus).abs()
    if not output.per_image:
        return difference.mean(dim=0, keepdim=True)
    per_image = difference.flatten(1)
    total = per_image.sum(dim=1, keepdim=True).clamp_min(torch.finfo(per_image.dtype).tiny)
    return (per_image * per_image.shape[1] / total).reshape(difference.shape)


class FisherDPLR(ReconstructionLoss):
    """FIMA-Q: with e = |pred - target| flattened per image, G (k × D) the mean |∂L/∂output| (L the task's
    objective: for a classifier the KL divergence of its logits) of the quantized
    model (this unit quantized, the rest FP) and Δ (k × D) the mean |quantized - FP output| at k refreshes,
    loss = p1 · mean(e Gᵀ (Δ Δᵀ)⁻¹ G eᵀ) / its first value + p2 · mean(e² ⊙ mean_k G) / its first value;
    both normalizers restart at each refresh (every ⌊iterations / k⌋ steps from the first)."""

    def __init__(self, rank: int = 5, low_rank_weight: float = 1.0, diagonal_weight: float = 1.0) -> None:
        self.rank, self.p1, self.p2 = rank, low_rank_weight, diagonal_weight
        self.grads = self.deltas = self.inverse = None
        self.first = None
        self.refreshed = False
        self.every = 1

    def prepare(self, unit, context):
        self.grads = self.deltas = None
        self.every = max(1, math.floor(context.iterations / self.rank))

    def step(self, index, unit, context):
        self.refreshed = index % self.every == 0
        if not self.refreshed:
            return
        grad, delta = context.quantized_fisher(unit)
        self.grads = grad if self.grads is None else torch.cat([self.grads, grad])
        self.deltas = delta if self.deltas is None else torch.cat([self.deltas, delta])
        self.inverse = torch.linalg.inv(self.deltas @ self.deltas.t())

    def terms(self, pred, target) -> tuple[torch.Tensor, torch.Tensor]:
        error = (pred - target).abs().reshape(pred.shape[0], -1)
        projected = error.unsqueeze(1) @ self.grads.abs().t()
        low_rank = (projected @ self.inverse @ projected.transpose(1, 2)).mean()
        diagonal = (error.pow(2) * self.grads.abs().mean(dim=0)).mean()
        return low_rank, diagonal

    def __call__(self, pred, target):
        low_rank, diagonal = self.terms(pred, target)
        if self.first is None or self.refreshed:
            self.first = (low_rank.detach(), diagonal.detach())
        return self.p1 * low_rank / self.first[0] + self.p2 * diagonal / self.first[1]


# ---- the loop ----------------------------------------------------------------------------------------------

@dataclass
class Unit:
    name: str
    module: nn.Module  # in the quantized model
    fp_module: nn.Module  # the same unit in the FP model
    is_head: bool
    is_neck: bool = False  # a detector's FPN, quantized with ``quantize=all``
    args: tuple = ()  # what the model passes the unit after its input (an mmdet Swin block's feature-map size)
    kwargs: dict = field(default_factory=dict)

    def __call__(self, inputs: Captured) -> torch.Tensor:
        """The quantized unit's output on ``inputs`` (:func:`compared_output`)."""
        return compared_output(self.module(inputs, *self.args, **self.kwargs))


def compared_output(output: torch.Tensor | tuple | list) -> torch.Tensor:
    """A unit's output as reconstruction compares it: its tensor (mmcv's patch embedding and merging return
    (tensor, size)), or its tensors flattened per image and joined (an FPN's maps, as the authors' detection code
    compares them)."""
    tensors = tensors_of(output)
    return torch.cat([t.flatten(1) for t in tensors], dim=1) if isinstance(tensors, tuple) else tensors


def _pick(value: Captured, index: torch.Tensor) -> Captured:
    return tuple(t[index] for t in value) if isinstance(value, tuple) else value[index]


def _mixed(quantized: Captured, fp: Captured, drop_prob: float, generator: torch.Generator) -> Captured:
    """Each element from the quantized input with probability ``drop_prob``, else the FP one (QDrop), a tuple's
    tensors drawn in order."""
    if isinstance(quantized, tuple):
        return tuple(_mixed(q, f, drop_prob, generator) for q, f in zip(quantized, fp))
    mix = torch.rand(quantized.shape, generator=generator, dtype=quantized.dtype) < drop_prob
    return torch.where(mix.to(quantized.device), quantized, fp)


def reconstruction_units(qmodel: nn.Module, fp_model: nn.Module) -> list[Unit]:
    """Patch embedding, transformer blocks, patch mergings and the head, in forward order; a detector's FPN neck
    where it is quantized (the authors' detection code's units)."""
    units = []
    for name, module in qmodel.named_modules():
        kind = type(module).__name__
        if (is_instrumented_block(module) or kind in ("PatchEmbed", "PatchMerging", "FPN") or name == "head"):
            if any(True for _ in weight_quantized_layers(module)):
                units.append(Unit(name, module, fp_model.get_submodule(name), name == "head", kind == "FPN"))
    return units


@contextlib.contextmanager
def qdrop(quantizers: list[ActQuantizer], drop_prob: float, generator: torch.Generator) -> Iterator[None]:
    """While training: each uniform quantizer rounds straight-through (its scale learns) and keeps each element
    quantized with probability ``drop_prob``, else passes it through (QDrop). The mask's uniform draws fill the
    input's memory layout (``torch.rand_like``'s order, the authors' code: q, k and v are strided views of qkv's
    output), not its logical order."""
    def hook(quantizer: ActQuantizer, args: tuple, _: torch.Tensor) -> torch.Tensor:
        x = args[0]
        levels = 2 ** quantizer.bits - 1
        quantized = (torch.clamp(round_ste(x / quantizer.scale) + quantizer.zero_point, 0, levels)
                     - quantizer.zero_point) * quantizer.scale
        if drop_prob >= 1.0:
            return quantized
        draw = torch.empty_like(x).uniform_(0, 1, generator=generator)
        return torch.where(draw < drop_prob, quantized, x)
    handles = [q.register_forward_hook(hook) for q in quantizers if q.frozen and q.kind == "uniform"]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def only_unit_quantized(qmodel: nn.Module, unit: nn.Module,
                        unrounded: dict[nn.Module, torch.Tensor] | None = None) -> Iterator[None]:
    """Every quantizer outside ``unit`` bypassed and every weight outside it unquantized: the FP weight, also
    of a unit already reconstructed (its weight from before the hard rounding, kept in ``unrounded``)."""
    inside = {id(m) for m in unit.modules()}
    outside = [q for _, q in act_quantizers(qmodel) if id(q) not in inside]
    modes = [q.mode for q in outside]
    swapped = [(layer, layer.weight.data) for layer in (unrounded or {}) if id(layer) not in inside]
    for quantizer in outside:
        quantizer.mode = "bypass"
    for layer, _ in swapped:
        layer.weight.data = unrounded[layer]
    try:
        with unquantized_weights(layer for _, layer in weight_quantized_layers(qmodel) if id(layer) not in inside):
            yield
    finally:
        for quantizer, mode in zip(outside, modes):
            quantizer.mode = mode
        for layer, data in swapped:
            layer.weight.data = data


class ReconstructionContext:
    """What objectives may ask of the models: gradients of the task's objective at a unit's output."""

    def __init__(self, qmodel: nn.Module, fp_model: nn.Module, images: torch.Tensor, batch_size: int,
                 iterations: int, device: torch.device, output: OutputObjective) -> None:
        self.qmodel, self.fp_model, self.images, self.output = qmodel, fp_model, images, output
        self.batch_size, self.iterations, self.device = batch_size, iterations, device
        with torch.no_grad():
            self.references = [output.reference(output.outputs(fp_model, images[s:s + batch_size].to(device)))
                               for s in range(0, len(images), batch_size)]
        self.fp_outputs: torch.Tensor | None = None
        # reconstructed layers' weights before their hard rounding: FIMA-Q's refresh computes the units outside
        # the one it trains in floating point with these (the authors' code rounds all weights at the very end)
        self.unrounded: dict[nn.Module, torch.Tensor] = {}

    def _gradients(self, model: nn.Module, module: nn.Module, shift: float,
                   keep_outputs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        grads, outputs = [], []

        def hook(_: nn.Module, __: tuple, out: torch.Tensor | tuple) -> torch.Tensor | tuple:
            tensor = tensors_of(out)
            if isinstance(tensor, tuple):
                raise ValueError(f"{type(module).__name__} returns {len(tensor)} tensors: no gradient at one output")
            tensor = tensor.detach().requires_grad_()
            tensor.register_hook(lambda g: grads.append(g.detach()))
            if keep_outputs:
                outputs.append(tensor.detach())
            shifted = tensor + shift if shift else tensor * 1
            return (shifted, *out[1:]) if isinstance(out, tuple) else shifted

        handle = module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                for index, start in enumerate(range(0, len(self.images), self.batch_size)):
                    produced = self.output.outputs(model, self.images[start:start + self.batch_size].to(self.device))
                    self.output.loss(produced, self.references[index]).backward()
        finally:
            handle.remove()
        return torch.cat(grads), (torch.cat(outputs) if keep_outputs else None)

    def output_gradients(self, module: nn.Module, model: nn.Module, shift: float) -> torch.Tensor:
        return self._gradients(model, module, shift)[0]

    def quantized_fisher(self, unit: Unit) -> tuple[torch.Tensor, torch.Tensor]:
        """FIMA-Q's refresh: the quantized model with only ``unit`` quantized (as it trains: soft rounding,
        QDrop), mean |∂L/∂output| and mean |output - FP output|, each (1, D)."""
        with only_unit_quantized(self.qmodel, unit.module, self.unrounded):
            grads, outputs = self._gradients(self.qmodel, unit.module, 0.0, keep_outputs=True)
        grad = grads.reshape(len(grads), -1).abs().mean(dim=0, keepdim=True)
        delta = (outputs - self.fp_outputs).abs().mean(dim=0).reshape(1, -1)
        return grad, delta


@dataclass
class ReconstructionSettings:
    iterations: int = 20000
    batch_size: int = 32
    drop_prob: float = 0.5
    weight_lr: float = 1e-3
    scale_lr: float = 4e-5
    round_weight: float = 0.01
    warmup: float = 0.2
    temperature: float = 20.0


def reconstruct(qmodel: nn.Module, fp_model: nn.Module, images: torch.Tensor, device: torch.device,
                objective: Callable[[Unit], ReconstructionLoss], settings: ReconstructionSettings, seed: int,
                capture_batch: int, on_step: Callable[[str, int, float], None] | None = None,
                output: OutputObjective | None = None) -> dict[str, float]:
    """Every unit reconstructed in order (module docstring); returns each unit's last loss. ``output``: the
    task's objective (default: a classifier's logits at ``settings.temperature``)."""
    for parameter in qmodel.parameters():
        parameter.requires_grad_(False)
    context = ReconstructionContext(qmodel, fp_model, images, settings.batch_size, settings.iterations, device,
                                    output or LogitDivergence(settings.temperature))
    losses = {}
    for unit in reconstruction_units(qmodel, fp_model):
        unit.args, unit.kwargs = call_arguments(fp_model, images[:1], unit.fp_module, device)
        fp = capture(fp_model, images, {"in": Target(unit.fp_module, LAYER_INPUT),
                                        "out": Target(unit.fp_module, LAYER_OUTPUT)}, device, capture_batch)
        quantized_inputs = capture(qmodel, images, {"in": Target(unit.module, LAYER_INPUT)}, device, capture_batch)["in"]
        context.fp_outputs = compared_output(fp["out"])
        loss = objective(unit)
        generator = torch.Generator().manual_seed(seed)
        losses[unit.name] = reconstruct_unit(unit, fp["in"], quantized_inputs, context.fp_outputs, loss, settings,
                                             context, generator, on_step)
    return losses


def reconstruct_unit(unit: Unit, fp_inputs: Captured, quantized_inputs: Captured, targets: torch.Tensor,
                     objective: ReconstructionLoss, settings: ReconstructionSettings, context: ReconstructionContext,
                     generator: torch.Generator, on_step: Callable[[str, int, float], None] | None = None) -> float:
    layers = [layer for _, layer in weight_quantized_layers(unit.module) if layer.weight_bits]
    roundings = []
    for layer in layers:
        rounding = AdaRound(layer.weight, layer.weight_scale, layer.weight_zero_point, layer.weight_bits)
        object.__setattr__(layer, "weight_rounding", rounding)
        roundings.append(rounding)
    quantizers = [q for _, q in act_quantizers(unit.module)]
    scales = learnable_scales(unit.module, activations=True, weights=False)
    weight_optimizer = torch.optim.Adam([r.alpha for r in roundings], lr=settings.weight_lr)
    scale_optimizer = torch.optim.Adam(scales, lr=settings.scale_lr) if scales else None
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(scale_optimizer, T_max=settings.iterations, eta_min=0.0)
                if scale_optimizer else None)
    objective.prepare(unit, context)
    value = float("nan")
    with qdrop(quantizers, settings.drop_prob, generator):
        for step in range(settings.iterations):
            index = torch.randperm(len(targets), generator=generator)[:settings.batch_size]
            inputs = _mixed(_pick(quantized_inputs, index), _pick(fp_inputs, index), settings.drop_prob, generator)
            objective.step(step, unit, context)
            objective.batch(index)
            weight_optimizer.zero_grad()
            if scale_optimizer:
                scale_optimizer.zero_grad()
            loss = objective(unit(inputs), targets[index])
            exponent = rounding_exponent(step + 1, settings.iterations, settings.warmup)
            if step + 1 >= settings.warmup * settings.iterations:
                loss = loss + settings.round_weight * sum(r.regularizer(exponent) for r in roundings)
            loss.backward()
            weight_optimizer.step()
            if scale_optimizer:
                scale_optimizer.step()
                schedule.step()
            value = loss.item()
            if on_step is not None:
                on_step(unit.name, step, value)
    with torch.no_grad():
        for layer, rounding in zip(layers, roundings):
            context.unrounded[layer] = layer.weight.detach().clone()
            layer.weight.copy_(rounding.hard_weight(layer.weight))
            del layer.__dict__["weight_rounding"]
    _scales_to_buffers(unit.module)
    return value


def _scales_to_buffers(module: nn.Module) -> None:
    """Learned activation scales (of any shape: per tensor, head or token) back to buffers, with the range record."""
    for _, quantizer in act_quantizers(module):
        scale = quantizer._parameters.get("scale")
        if scale is None:
            continue
        del quantizer._parameters["scale"]
        quantizer.register_buffer("scale", scale.detach().clamp_min(MIN_SCALE).clone())
        quantizer.low.copy_((-quantizer.zero_point * quantizer.scale).min())
        quantizer.high.copy_(((2 ** quantizer.bits - 1 - quantizer.zero_point) * quantizer.scale).max())


# ---- APHQ-ViT's MLP reconstruction -------------------------------------------------------------------------

def relu_mlps(model: nn.Module) -> list[BlockMlp]:
    """Every transformer block's MLP gets ReLU in place of its GELU (APHQ-ViT's MLP reconstruction); returns them."""
    mlps = [mlp for m in model.modules() if is_instrumented_block(m) and (mlp := block_mlp(m)) is not None]
    for mlp in mlps:
        mlp.use_activation(nn.ReLU())
    return mlps


def positive_percentile(x: torch.Tensor, fraction: float) -> float:
    """The ⌈n·fraction⌉-th smallest of the n positive values of ``x``, n·fraction in float32 as the authors'
    code computes it (a float64 product can round to the other side of an integer)."""
    positive = x.reshape(-1)[x.reshape(-1) > 0].sort().values
    count = torch.tensor([float(len(positive))], dtype=torch.float32)
    rank = max(int((count * fraction).ceil().item()) - 1, 0) if len(positive) else 0
    return positive[rank].item()


def reconstruct_mlps(model: nn.Module, fp_model: nn.Module, images: torch.Tensor, device: torch.device,
                     iterations: int, batch_size: int, lr: float, percentile: float, output: OutputObjective,
                     quantized_weight: float, generator: torch.Generator, capture_batch: int,
                     on_step: Callable[[str, int, float], None] | None = None) -> dict[str, float]:
    """APHQ-ViT's MLP reconstruction (docs/methods.md, APHQ-ViT): ``model``'s MLPs run ReLU instead of GELU;
    each block's norm2, fc1 and fc2 (weights and biases) learn, from the FP (GELU) model's MLP input, to give its
    MLP output under the perturbation-Hessian weighted error (of the task's objective ``output``; averaged over
    the images and normalized to RMS 1, or per image and normalized to mean 1 for a per-image objective),
    summed over tokens and divided by 10, plus ``quantized_weight`` times that error with fc2's input clipped to
    [0, u], u the ``percentile`` of the FP model's positive fc2 inputs. Adam, cosine decay to 0. The model is
    edited in place."""
    context = ReconstructionContext(model, fp_model, images, batch_size, iterations, device, output)
    names = [name for name, m in model.named_modules() if is_instrumented_block(m) and block_mlp(m) is not None]
    losses = {}
    for name in names:
        block, fp_block = model.get_submodule(name), fp_model.get_submodule(name)
        mlp, fp_mlp = block_mlp(block), block_mlp(fp_block)
        fp = capture(fp_model, images, {"in": Target(fp_mlp.fc1, LAYER_INPUT), "hidden": Target(fp_mlp.fc2, LAYER_INPUT),
                                        "out": Target(fp_mlp.module, LAYER_OUTPUT)}, device, capture_batch)
        hessian = perturbation_hessian(context, fp_mlp.module)
        if not output.per_image:
            hessian = hessian * torch.sqrt(hessian.numel() / hessian.pow(2).sum())
        bound = positive_percentile(fp["hidden"], percentile)
        parameters = [p for layer in (block.norm2, mlp.fc1, mlp.fc2) for p in (layer.weight, layer.bias)]
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(parameters, lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=0.0)
        value = float("nan")
        for step in range(iterations):
            index = torch.randperm(len(fp["in"]), generator=generator)[:batch_size]
            inputs, target = fp["in"][index], fp["out"][index]
            weights = hessian[index.to(hessian.device)] if output.per_image else hessian
            optimizer.zero_grad()
            loss = mlp_reconstruction_loss(mlp, inputs, target, weights, bound, quantized_weight)
            loss.backward()
            optimizer.step()
            schedule.step()
            value = loss.item()
            if on_step is not None:
                on_step(name, step, value)
        for parameter in parameters:
            parameter.requires_grad_(False)
        losses[name] = value
    return losses


def mlp_reconstruction_loss(mlp: BlockMlp, inputs: torch.Tensor, target: torch.Tensor, hessian: torch.Tensor,
                            bound: float, quantized_weight: float) -> torch.Tensor:
    """APHQ-ViT's MLP objective (:func:`reconstruct_mlps`) on one mini-batch."""
    def weighted(out: torch.Tensor) -> torch.Tensor:
        return ((out - target).pow(2) * hessian.abs()).sum(1).mean() / 10
    out = mlp.module(inputs)
    clipped = mlp.fc2(torch.clamp(mlp.activation(mlp.fc1(inputs)), 0, bound))
    return weighted(out) + weighted(clipped) * quantized_weight
