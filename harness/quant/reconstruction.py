"""Block reconstruction with learned weight rounding (AdaRound) and QDrop (docs/methods.md, APHQ-ViT,
Reconstruction), with a pluggable objective: MSE (BRECQ/QDrop), APHQ-ViT's average perturbation Hessian,
FIMA-Q's Fisher information (diagonal plus low rank).

The units, in forward order: the patch embedding, every transformer block, Swin's patch mergings and the
classifier head (KL divergence of the logits). For each unit: the FP model's input and output, the quantized
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
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from harness.quant.fake_quant import MIN_SCALE, round_ste
from harness.quant.learnable import learnable_scales
from harness.quant.modules import ActQuantizer, act_quantizers, unquantized_weights, weight_quantized_layers


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


def kl_to_fp(logits: torch.Tensor, fp_softmax: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(logits / temperature, dim=-1), fp_softmax, reduction="batchmean")


class PerturbationHessian(_FirstStepNormalized):
    """APHQ-ViT: mean((pred - target)² ⊙ H), H = |g(+δ) - g(-δ)| averaged over images, g the gradient of
    KL(FP logits / T ‖ logits / T) with respect to the unit's output shifted by ±δ (δ = 1e-6) in the FP model."""

    def __init__(self, temperature: float = 20.0, delta: float = 1e-6) -> None:
        super().__init__(2.0)
        self.temperature, self.delta, self.hessian = temperature, delta, None

    def prepare(self, unit, context):
        grads = []
        for sign in (1, -1):
            grads.append(context.output_gradients(unit.fp_module, context.fp_model,
                                                  shift=sign * self.delta, temperature=self.temperature))
        self.hessian = (grads[0] - grads[1]).abs().mean(dim=0, keepdim=True)

    def raw(self, pred, target):
        return ((pred - target).pow(2) * self.hessian.abs()).mean()


class FisherDPLR(ReconstructionLoss):
    """FIMA-Q: with e = |pred - target| flattened per image, G (k × D) the mean |∂KL/∂output| of the quantized
    model (this unit quantized, the rest FP) and Δ (k × D) the mean |quantized - FP output| at k refreshes,
    loss = p1 · mean(e Gᵀ (Δ Δᵀ)⁻¹ G eᵀ) / its first value + p2 · mean(e² ⊙ mean_k G) / its first value;
    both normalizers restart at each refresh (every ⌊iterations / k⌋ steps from the first)."""

    def __init__(self, rank: int = 5, low_rank_weight: float = 1.0, diagonal_weight: float = 1.0,
                 temperature: float = 20.0) -> None:
        self.rank, self.p1, self.p2, self.temperature = rank, low_rank_weight, diagonal_weight, temperature
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
        grad, delta = context.quantized_fisher(unit, self.temperature)
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


def reconstruction_units(qmodel: nn.Module, fp_model: nn.Module) -> list[Unit]:
    """Patch embedding, transformer blocks, patch mergings and the head, in forward order."""
    from harness.model.arch import is_instrumented_block
    units = []
    for name, module in qmodel.named_modules():
        kind = type(module).__name__
        if (is_instrumented_block(module) or kind in ("PatchEmbed", "PatchMerging") or name == "head"):
            if any(True for _ in weight_quantized_layers(module)):
                units.append(Unit(name, module, fp_model.get_submodule(name), name == "head"))
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
    """What objectives may ask of the models: gradients of the KL divergence to the FP logits at a unit's output."""

    def __init__(self, qmodel: nn.Module, fp_model: nn.Module, images: torch.Tensor, batch_size: int,
                 iterations: int, device: torch.device, temperature: float) -> None:
        self.qmodel, self.fp_model, self.images = qmodel, fp_model, images
        self.batch_size, self.iterations, self.device = batch_size, iterations, device
        with torch.no_grad():
            self.fp_softmax = [F.softmax(fp_model(images[s:s + batch_size].to(device)) / temperature, dim=-1)
                               for s in range(0, len(images), batch_size)]
        self.fp_outputs: torch.Tensor | None = None
        # reconstructed layers' weights before their hard rounding: FIMA-Q's refresh computes the units outside
        # the one it trains in floating point with these (the authors' code rounds all weights at the very end)
        self.unrounded: dict[nn.Module, torch.Tensor] = {}

    def _gradients(self, model: nn.Module, module: nn.Module, shift: float, temperature: float,
                   keep_outputs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        grads, outputs = [], []

        def hook(_: nn.Module, __: tuple, out: torch.Tensor) -> torch.Tensor:
            out = out.detach().requires_grad_()
            out.register_hook(lambda g: grads.append(g.detach()))
            if keep_outputs:
                outputs.append(out.detach())
            return out + shift if shift else out * 1

        handle = module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                for index, start in enumerate(range(0, len(self.images), self.batch_size)):
                    logits = model(self.images[start:start + self.batch_size].to(self.device))
                    kl_to_fp(logits, self.fp_softmax[index], temperature).backward()
        finally:
            handle.remove()
        return torch.cat(grads), (torch.cat(outputs) if keep_outputs else None)

    def output_gradients(self, module: nn.Module, model: nn.Module, shift: float, temperature: float) -> torch.Tensor:
        return self._gradients(model, module, shift, temperature)[0]

    def quantized_fisher(self, unit: Unit, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """FIMA-Q's refresh: the quantized model with only ``unit`` quantized (as it trains: soft rounding,
        QDrop), mean |∂KL/∂output| and mean |output - FP output|, each (1, D)."""
        with only_unit_quantized(self.qmodel, unit.module, self.unrounded):
            grads, outputs = self._gradients(self.qmodel, unit.module, 0.0, temperature, keep_outputs=True)
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
                capture_batch: int, on_step: Callable[[str, int, float], None] | None = None) -> dict[str, float]:
    """Every unit reconstructed in order (module docstring); returns each unit's last loss."""
    from harness.quant.capture import LAYER_INPUT, LAYER_OUTPUT, Target, capture
    for parameter in qmodel.parameters():
        parameter.requires_grad_(False)
    context = ReconstructionContext(qmodel, fp_model, images, settings.batch_size, settings.iterations, device,
                                    settings.temperature)
    losses = {}
    for unit in reconstruction_units(qmodel, fp_model):
        fp = capture(fp_model, images, {"in": Target(unit.fp_module, LAYER_INPUT),
                                        "out": Target(unit.fp_module, LAYER_OUTPUT)}, device, capture_batch)
        quantized_inputs = capture(qmodel, images, {"in": Target(unit.module, LAYER_INPUT)}, device, capture_batch)["in"]
        context.fp_outputs = fp["out"]
        loss = objective(unit)
        generator = torch.Generator().manual_seed(seed)
        losses[unit.name] = reconstruct_unit(unit, fp["in"], quantized_inputs, fp["out"], loss, settings, context,
                                             generator, on_step)
    return losses


def reconstruct_unit(unit: Unit, fp_inputs: torch.Tensor, quantized_inputs: torch.Tensor, targets: torch.Tensor,
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
            index = torch.randperm(len(fp_inputs), generator=generator)[:settings.batch_size]
            quantized, fp = quantized_inputs[index], fp_inputs[index]
            mix = torch.rand(quantized.shape, generator=generator, dtype=quantized.dtype) < settings.drop_prob
            inputs = torch.where(mix.to(quantized.device), quantized, fp)
            objective.step(step, unit, context)
            weight_optimizer.zero_grad()
            if scale_optimizer:
                scale_optimizer.zero_grad()
            loss = objective(unit.module(inputs), targets[index])
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

def relu_mlps(model: nn.Module) -> list[nn.Module]:
    """Every transformer block's MLP gets ReLU in place of its GELU (APHQ-ViT's MLP reconstruction); returns them."""
    from harness.model.arch import is_instrumented_block
    mlps = [m.mlp for m in model.modules() if is_instrumented_block(m) and hasattr(getattr(m, "mlp", None), "fc2")]
    for mlp in mlps:
        mlp.act = nn.ReLU()
    return mlps


def positive_percentile(x: torch.Tensor, fraction: float) -> float:
    """The ⌈n·fraction⌉-th smallest of the n positive values of ``x``, n·fraction in float32 as the authors'
    code computes it (a float64 product can round to the other side of an integer)."""
    positive = x.reshape(-1)[x.reshape(-1) > 0].sort().values
    count = torch.tensor([float(len(positive))], dtype=torch.float32)
    rank = max(int((count * fraction).ceil().item()) - 1, 0) if len(positive) else 0
    return positive[rank].item()


def reconstruct_mlps(model: nn.Module, fp_model: nn.Module, images: torch.Tensor, device: torch.device,
                     iterations: int, batch_size: int, lr: float, percentile: float, temperature: float,
                     quantized_weight: float, generator: torch.Generator, capture_batch: int,
                     on_step: Callable[[str, int, float], None] | None = None) -> dict[str, float]:
    """APHQ-ViT's MLP reconstruction (docs/methods.md, APHQ-ViT): ``model``'s MLPs run ReLU instead of GELU;
    each block's norm2, fc1 and fc2 (weights and biases) learn, from the FP (GELU) model's MLP input, to give its
    MLP output under the perturbation-Hessian weighted error (H normalized to RMS 1), summed over tokens and
    divided by 10, plus ``quantized_weight`` times that error with fc2's input clipped to [0, u], u the
    ``percentile`` of the FP model's positive fc2 inputs. Adam, cosine decay to 0. The model is edited in place."""
    from harness.model.arch import is_instrumented_block
    from harness.quant.capture import LAYER_INPUT, LAYER_OUTPUT, Target, capture
    context = ReconstructionContext(model, fp_model, images, batch_size, iterations, device, temperature)
    names = [name for name, m in model.named_modules() if is_instrumented_block(m) and hasattr(m, "mlp")]
    losses = {}
    for name in names:
        block, fp_block = model.get_submodule(name), fp_model.get_submodule(name)
        fp = capture(fp_model, images, {"in": Target(fp_block.mlp.fc1, LAYER_INPUT),
                                        "hidden": Target(fp_block.mlp.fc2, LAYER_INPUT),
                                        "out": Target(fp_block.mlp, LAYER_OUTPUT)}, device, capture_batch)
        grads = [context.output_gradients(fp_block.mlp, fp_model, shift=sign * 1e-6, temperature=temperature)
                 for sign in (1, -1)]
        hessian = (grads[0] - grads[1]).abs().mean(dim=0, keepdim=True)
        hessian = hessian * torch.sqrt(hessian.numel() / hessian.pow(2).sum())
        bound = positive_percentile(fp["hidden"], percentile)
        mlp = block.mlp
        parameters = [p for layer in (block.norm2, mlp.fc1, mlp.fc2) for p in (layer.weight, layer.bias)]
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(parameters, lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=0.0)
        value = float("nan")
        for step in range(iterations):
            index = torch.randperm(len(fp["in"]), generator=generator)[:batch_size]
            inputs, target = fp["in"][index], fp["out"][index]
            optimizer.zero_grad()
            loss = mlp_reconstruction_loss(mlp, inputs, target, hessian, bound, quantized_weight)
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


def mlp_reconstruction_loss(mlp: nn.Module, inputs: torch.Tensor, target: torch.Tensor, hessian: torch.Tensor,
                            bound: float, quantized_weight: float) -> torch.Tensor:
    """APHQ-ViT's MLP objective (:func:`reconstruct_mlps`) on one mini-batch."""
    def weighted(out: torch.Tensor) -> torch.Tensor:
        return ((out - target).pow(2) * hessian.abs()).sum(1).mean() / 10
    out = mlp(inputs)
    clipped = mlp.fc2(torch.clamp(mlp.act(mlp.fc1(inputs)), 0, bound))
    return weighted(out) + weighted(clipped) * quantized_weight
