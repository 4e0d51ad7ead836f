"""Named points inside a model where a quantizer or a probe can act on a tensor.

A point is ``(module, name)``. The names ``in`` and ``out`` are the module's first input and its
output, reached with forward hooks; other names (``q``, ``scores``, ``attn_v``, ``residual1``, ...)
are called by the instrumented forwards in :mod:`harness.arch`. Points hold modules (an
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
    is_new = name not in points
    points[name] = point
    if is_new and name == "in":
        module.register_forward_pre_hook(_InputHook())
    elif is_new and name == "out":
        module.register_forward_hook(_OutputHook())


def detach_point(module: nn.Module, name: str) -> None:
    """Make the point at ``(module, name)`` an identity again (the hook stays, inert)."""
    points = getattr(module, POINTS, None)
    if points is not None and name in points:
        points[name] = nn.Identity()


def apply_point(module: nn.Module, name: str, x: Tensor) -> Tensor:
    points = module._modules.get(POINTS)
    if points is None or name not in points._modules:
        return x
    return points._modules[name](x)
