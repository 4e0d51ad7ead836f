"""Where the matmuls are in a quantized model, and their FP inputs on the calibration images.

Sites (spec methods.md, Ranking-loss PTQ: "every matmul"): every weight-quantized Linear and the
patch-embedding Conv2d (input at its ``in`` point, weight per channel), and per attention module
q·kᵀ (points ``q``, ``k``; the ``attn`` map adds the ranking loss) and attn·v (points ``attn``,
``v``). FP values are captured from the quantized model itself with every quantizer bypassed and
weights unquantized, which is the FP model with the same module names (README §3: the instrumented
forward equals timm's).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch
from torch import nn

from harness.arch import is_instrumented_attention
from harness.instrument import POINTS, attach_point
from harness.quant.modules import ActQuantizer, QuantConv2d, act_quantizers, weight_quantized_layers
from methods.ranking.search import MatmulUnit, activation_operand, weight_operand

LAYER_INPUT, LAYER_OUTPUT = "layer input", "layer output"  # hook targets; other targets are named points
OPERAND_POINTS = {"layer": ("in", None), "qk": ("q", "k"), "av": ("attn", "v")}  # (X, W) points; None: the weight


@dataclass(frozen=True)
class Target:
    """A tensor to capture: a layer's input or output, or a named point such as ``(attention, "q")``."""

    module: nn.Module
    point: str


def point_quantizer(module: nn.Module, point: str) -> ActQuantizer | None:
    points = module._modules.get(POINTS)
    found = points._modules.get(point) if points is not None else None
    return found if isinstance(found, ActQuantizer) else None


@dataclass
class MatmulSite:
    """One matmul of the model: a weight layer (``kind="layer"``) or an attention product."""

    name: str
    kind: Literal["layer", "qk", "av"]
    module: nn.Module

    def targets(self) -> dict[str, Target]:
        if self.kind == "layer":
            return {"x": Target(self.module, LAYER_INPUT)}
        x_point, w_point = OPERAND_POINTS[self.kind]
        targets = {"x": Target(self.module, x_point), "w": Target(self.module, w_point)}
        if self.kind == "qk":
            targets["attention_map"] = Target(self.module, "attn")
        return targets

    def searched_quantizers(self) -> list[ActQuantizer]:
        found = (point_quantizer(self.module, p) for p in OPERAND_POINTS[self.kind] if p is not None)
        return [q for q in found if q is not None]

    def unit(self, values: dict[str, torch.Tensor]) -> MatmulUnit:
        """The search problem on the captured FP ``values``."""
        x_point, w_point = OPERAND_POINTS[self.kind]
        x = activation_operand(point_quantizer(self.module, x_point), values["x"])
        if self.kind == "layer":
            layer = self.module
            if isinstance(layer, QuantConv2d):
                return MatmulUnit(self.name, x, weight_operand(layer),
                                  lambda x, w: layer._conv_forward(x, w, layer.bias), channel_dim=1)
            return MatmulUnit(self.name, x, weight_operand(layer), lambda x, w: nn.functional.linear(x, w, layer.bias))
        w = activation_operand(point_quantizer(self.module, w_point), values["w"])
        if self.kind == "qk":
            return MatmulUnit(self.name, x, w, lambda q, k: q @ k.transpose(-2, -1), values["attention_map"])
        return MatmulUnit(self.name, x, w, lambda a, v: a @ v)


def matmul_sites(qmodel: nn.Module) -> list[MatmulSite]:
    """Every matmul with at least one scale to search, in module order.

    In the ``psaq`` profile only the patch-embedding, proj and fc2 inputs sit at matmul inputs;
    q, k, v and attn carry no quantizer there, so the attention products are not searched.
    """
    layers = {id(m) for _, m in weight_quantized_layers(qmodel)}
    sites = []
    for name, module in qmodel.named_modules():
        if id(module) in layers:
            site = MatmulSite(name, "layer", module)
            if module.weight_bits or site.searched_quantizers():
                sites.append(site)
        elif is_instrumented_attention(module):
            products = (MatmulSite(f"{name}.q@k", "qk", module), MatmulSite(f"{name}.attn@v", "av", module))
            sites += [site for site in products if site.searched_quantizers()]
    return sites


@contextlib.contextmanager
def floating_point(qmodel: nn.Module) -> Iterator[nn.Module]:
    """Bypass every activation quantizer and unquantize every weight for the duration of a block."""
    quantizers = [q for _, q in act_quantizers(qmodel)]
    layers = [layer for _, layer in weight_quantized_layers(qmodel)]
    modes, bits = [q.mode for q in quantizers], [layer.weight_bits for layer in layers]
    for quantizer in quantizers:
        quantizer.mode = "bypass"
    for layer in layers:
        layer.weight_bits = None  # an attribute swap: keeps the scales, unlike set_weight_bits
    try:
        yield qmodel
    finally:
        for quantizer, mode in zip(quantizers, modes):
            quantizer.mode = mode
        for layer, layer_bits in zip(layers, bits):
            layer.weight_bits = layer_bits


class _Done(Exception):
    """Raised once every target of a batch is captured, to skip the rest of the forward pass."""


class _Tap(nn.Module):
    """Stands at a named point while capturing: records the value, then runs what was there."""

    def __init__(self, record: Callable[[torch.Tensor], None], inner: nn.Module | None) -> None:
        super().__init__()
        self.record, self.inner = record, inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.record(x)
        return x if self.inner is None else self.inner(x)


@torch.no_grad()
def capture(qmodel: nn.Module, images: torch.Tensor, targets: dict[str, Target], device: torch.device, batch_size: int,
            reduce: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """FP values at ``targets`` for all images, concatenated over batches.

    ``reduce(key, batch_value)`` may shrink what is kept per batch (e.g. to per-image norms).
    """
    kept: dict[str, list[torch.Tensor]] = {key: [] for key in targets}
    pending: set[str] = set()

    def recorder(key: str) -> Callable[[torch.Tensor], None]:
        def record(value: torch.Tensor) -> None:
            kept[key].append(reduce(key, value) if reduce else value.detach().clone())
            pending.discard(key)
            if not pending:
                raise _Done
        return record

    with floating_point(qmodel), contextlib.ExitStack() as stack:
        for key, target in targets.items():
            stack.enter_context(_hooked(target, recorder(key)))
        for start in range(0, len(images), batch_size):
            pending.update(targets)
            try:
                qmodel(images[start:start + batch_size].to(device))
            except _Done:
                pass
    return {key: torch.cat(values) for key, values in kept.items()}


@contextlib.contextmanager
def _hooked(target: Target, record: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Record ``target``'s value during the block; the model is restored exactly afterwards."""
    module, point = target.module, target.point
    if point in (LAYER_INPUT, LAYER_OUTPUT):
        handle = (module.register_forward_pre_hook(lambda m, args: record(args[0]), prepend=True)
                  if point == LAYER_INPUT else module.register_forward_hook(lambda m, args, out: record(out)))
        try:
            yield
        finally:
            handle.remove()
        return
    had_points = POINTS in module._modules
    original = module._modules[POINTS]._modules.get(point) if had_points else None
    attach_point(module, point, _Tap(record, original))
    try:
        yield
    finally:
        if original is not None:
            attach_point(module, point, original)
        elif had_points:
            del module._modules[POINTS][point]
        else:
            delattr(module, POINTS)
