"""Named points inside a model where a quantizer or a probe can act on a tensor.

A point is ``(module, name)``. The names ``in`` and ``out`` are the module's first input and its
output, reached with forward hooks; other names (``q``, ``scores``, ``attn_v``, ``residual1``, ...)
are called by the instrumented forwards in :mod:`harness.model.arch`. Points hold modules (an
``ActQuantizer``, a probe), so a deep copy of the model carries them along.
"""
from __future__ import annotations

from torch import Tensor, nn

POINTS = "dfq_points"


class _InputHook:
    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        if not args:
            return None
        return (apply_point(module, "in", args[0]), *args[1:])


class _OutputHook:
    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return apply_point(module, "out", output)


def attach_point(module: nn.Module, name: str, point: nn.Module) -> None:
    """Put ``point`` at ``(module, name)``, replacing whatever was there."""
    points = getattr(module, POINTS, None)
    if points is None:
        points = nn.ModuleDict()
        module.add_module(POINTS, points)
    points[name] = point
    if name == "in" and not any(isinstance(h, _InputHook) for h in module._forward_pre_hooks.values()):
        module.register_forward_pre_hook(_InputHook())
    elif name == "out" and not any(isinstance(h, _OutputHook) for h in module._forward_hooks.values()):
        module.register_forward_hook(_OutputHook())


def get_point(module: nn.Module, name: str) -> nn.Module | None:
    """What sits at ``(module, name)``, or None."""
    points = module._modules.get(POINTS)
    return points._modules.get(name) if points is not None else None


def remove_point(module: nn.Module, name: str) -> None:
    """Take the point away; the points dict goes too when it empties (a hook, if any, stays inert)."""
    points = module._modules.get(POINTS)
    if points is None or name not in points._modules:
        return
    del points[name]
    if not len(points):
        delattr(module, POINTS)


def apply_point(module: nn.Module, name: str, x: Tensor) -> Tensor:
    points = module._modules.get(POINTS)
    if points is None or name not in points._modules:
        return x
    return points._modules[name](x)


def only_output_points(module: nn.Module, outputs: frozenset[str] = frozenset({"attn_v"})) -> bool:
    """True when no point but those in ``outputs`` sits on ``module``: a fused kernel computes the rest."""
    points = module._modules.get(POINTS)
    return points is None or set(points._modules) <= outputs
