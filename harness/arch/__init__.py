"""Instrumented forwards for the model families the quantizer wraps.

Each file covers one family and subclasses the library's own attention/block classes, overriding
``forward`` only to expose named points (:mod:`harness.instrument`) at the matmul inputs, the
pre-softmax scores, the attn·v product and the residual sums. :func:`instrument` swaps a module's
class in place (parameters, buffers and state-dict keys unchanged); :func:`restore` swaps it back.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

_SWAPS: dict[type, type] = {}


def register_swap(original: type, instrumented: type) -> None:
    _SWAPS[original] = instrumented


def instrument(model: nn.Module) -> int:
    """Swap every known attention/block class for its instrumented subclass; returns the count."""
    _load_families()
    swapped = 0
    for module in model.modules():
        instrumented = _SWAPS.get(type(module))
        if instrumented is not None:
            module.__class__ = instrumented
            swapped += 1
    return swapped


def restore(model: nn.Module) -> None:
    """Undo :func:`instrument` (the library's own forwards, e.g. fused attention, come back)."""
    originals = {instrumented: original for original, instrumented in _SWAPS.items()}
    for module in model.modules():
        original = originals.get(type(module))
        if original is not None:
            module.__class__ = original


@contextlib.contextmanager
def instrumented(model: nn.Module) -> Iterator[nn.Module]:
    """Instrument ``model`` for the duration of a block, e.g. while a generator probes attention."""
    instrument(model)
    try:
        yield model
    finally:
        restore(model)


def is_instrumented_attention(module: nn.Module) -> bool:
    return getattr(type(module), "is_dfq_attention", False)


def is_instrumented_block(module: nn.Module) -> bool:
    return getattr(type(module), "is_dfq_block", False)


def _load_families() -> None:
    from harness.arch import timm_swin, timm_vit  # noqa: F401  (they register their swaps)
