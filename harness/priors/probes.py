"""Probes: record what passes through a named point of every instrumented attention module.

Shared by the priors that read attention internals (PSAQ-ViT's attn·v products, SPDFQ's
post-softmax maps). The model is left exactly as it was: classes restored, probes removed, and a
point that was already there (a quantizer) put back.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import Tensor, nn

from harness.model.arch import instrumented, is_instrumented_attention
from harness.model.instrument import attach_point, get_point, remove_point


class Probe(nn.Module):
    """Records the tensor passing through a point and returns it unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.value: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.value = x
        return x


@contextlib.contextmanager
def attention_point_probes(model: nn.Module, point: str) -> Iterator[list[tuple[nn.Module, Probe]]]:
    """Instrument ``model`` and probe ``point`` of every attention module; yields (module, probe) in block order."""
    with instrumented(model):
        attentions = [module for module in model.modules() if is_instrumented_attention(module)]
        previous = [get_point(module, point) for module in attentions]
        probes = [Probe() for _ in attentions]
        for module, probe in zip(attentions, probes):
            attach_point(module, point, probe)
        try:
            yield list(zip(attentions, probes))
        finally:
            for module, original in zip(attentions, previous):
                if original is None:
                    remove_point(module, point)
                else:
                    attach_point(module, point, original)
