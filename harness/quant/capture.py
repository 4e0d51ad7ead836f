"""Capture the tensors a calibration pass needs: a module's input or output, or a named point's value.

Generic across calibrators: block reconstruction captures FP block outputs and quantized block
inputs; the ranking calibrator captures FP matmul operands (with :func:`floating_point`). Capture
stops the forward pass as soon as every target of a batch is recorded, and leaves the model exactly
as it was (hooks removed, points restored).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from harness.model.instrument import POINTS, attach_point
from harness.quant.modules import act_quantizers, unquantized_weights, weight_quantized_layers

LAYER_INPUT, LAYER_OUTPUT = "layer input", "layer output"  # hook targets; other targets are named points
Captured = torch.Tensor | tuple[torch.Tensor, ...]  # what a target holds: a tensor, or an FPN's maps


@dataclass(frozen=True)
class Target:
    """A tensor to capture: a module's input or output, or a named point such as ``(attention, "q")``."""

    module: nn.Module
    point: str


@contextlib.contextmanager
def floating_point(qmodel: nn.Module) -> Iterator[nn.Module]:
    """Bypass every activation quantizer and unquantize every weight for the duration of a block."""
    quantizers = [q for _, q in act_quantizers(qmodel)]
    modes = [q.mode for q in quantizers]
    for quantizer in quantizers:
        quantizer.mode = "bypass"
    try:
        with unquantized_weights(layer for _, layer in weight_quantized_layers(qmodel)):
            yield qmodel
    finally:
        for quantizer, mode in zip(quantizers, modes):
            quantizer.mode = mode


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
def capture(model: nn.Module, images: torch.Tensor, targets: dict[str, Target], device: torch.device, batch_size: int,
            reduce: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Values at ``targets`` for all images, concatenated over batches, with the model as it is
    (wrap the call in :func:`floating_point` for FP values of a quantized model).

    ``reduce(key, batch_value)`` may shrink what is kept per batch (e.g. to per-image norms).
    """
    kept: dict[str, list[torch.Tensor]] = {key: [] for key in targets}
    pending: set[str] = set()

    def recorder(key: str) -> Callable[[torch.Tensor], None]:
        def record(value: Captured) -> None:
            kept[key].append(reduce(key, value) if reduce else _map(lambda t: t.detach().clone(), value))
            pending.discard(key)
            if not pending:
                raise _Done
        return record

    with contextlib.ExitStack() as stack:
        for key, target in targets.items():
            stack.enter_context(_hooked(target, recorder(key)))
        for start in range(0, len(images), batch_size):
            pending.update(targets)
            try:
                model(images[start:start + batch_size].to(device))
            except _Done:
                pass
    return {key: concatenate(values) for key, values in kept.items()}


@torch.no_grad()
def call_arguments(model: nn.Module, image: torch.Tensor, module: nn.Module,
                   device: torch.device) -> tuple[tuple, dict]:
    """The arguments after the first, and the keyword arguments, ``model`` calls ``module`` with on ``image``.

    For modules called with more than their input, such as mmdet/mmseg Swin blocks (the feature map's
    height and width): the same for every image of a calibration set, as all have the prior's size.
    """
    seen: list[tuple[tuple, dict]] = []

    def record(_: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args[1:], kwargs))
        raise _Done

    handle = module.register_forward_pre_hook(record, with_kwargs=True, prepend=True)
    try:
        model(image.to(device))
    except _Done:
        pass
    finally:
        handle.remove()
    return seen[0]


def tensors_of(value: torch.Tensor | tuple | list) -> Captured:
    """The tensors of a module's input or output: one tensor as itself, several as a tuple (mmcv's patch embedding
    returns (tensor, size): its tensor; an FPN takes and gives a tuple of feature maps)."""
    if not isinstance(value, (tuple, list)):
        return value
    found = tuple(t for t in value if isinstance(t, torch.Tensor))
    return found[0] if len(found) == 1 else found


def concatenate(batches: list[Captured]) -> Captured:
    """Captured batches joined along the images, a tuple element by element."""
    if isinstance(batches[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*batches))
    return torch.cat(batches)


def _map(function: Callable[[torch.Tensor], torch.Tensor], value: Captured) -> Captured:
    return tuple(map(function, value)) if isinstance(value, tuple) else function(value)


@contextlib.contextmanager
def _hooked(target: Target, record: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Record ``target``'s value during the block; the model is restored exactly afterwards."""
    module, point = target.module, target.point
    if point in (LAYER_INPUT, LAYER_OUTPUT):
        handle = (module.register_forward_pre_hook(lambda m, args: record(tensors_of(args[0])), prepend=True)
                  if point == LAYER_INPUT else module.register_forward_hook(lambda m, args, out: record(tensors_of(out))))
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
