"""Probes of the attention logits q·kᵀ, before the 1/√d scale and the softmax (docs/methods.md, MaskAQ).

MaskAQ's generator reads these raw products in every block of the FP model and of the quantized model
being fine-tuned. They are read at the ``scores`` point of :mod:`harness.model.arch`'s instrumented attention
(ViT/DeiT), which holds q·kᵀ/√d whichever side the factor was applied on, and divided by the module's
factor (exact for the head sizes whose 1/√d is a power of two: 4, 16, 64, 256). A quantizer already at
that point (the ``psaq`` profile) keeps working: the probe records its input and passes it on.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import Tensor, nn

from harness.model.arch import instrumented, is_instrumented_attention
from harness.model.instrument import attach_point, get_point, remove_point

SCORES = "scores"


class LogitProbe(nn.Module):
    """Records the raw logits q·kᵀ (the point's value divided by ``factor``) and passes the value on,
    through ``inner`` where a quantizer sat at the point."""

    def __init__(self, factor: float, inner: nn.Module | None) -> None:
        super().__init__()
        self.factor = factor
        self.inner = inner
        self.value: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.value = x / self.factor
        return x if self.inner is None else self.inner(x)


@contextlib.contextmanager
def attention_logit_probes(model: nn.Module) -> Iterator[list[LogitProbe]]:
    """Instrument ``model`` and probe the pre-softmax logits of every attention module, in block order; on
    exit the model is exactly as before (classes restored, points put back)."""
    with instrumented(model):
        attentions = [module for module in model.modules() if is_instrumented_attention(module)]
        previous = [get_point(module, SCORES) for module in attentions]
        probes = [LogitProbe(float(module.scale), original) for module, original in zip(attentions, previous)]
        for module, probe in zip(attentions, probes):
            attach_point(module, SCORES, probe)
        try:
            yield probes
        finally:
            for module, probe, original in zip(attentions, probes, previous):
                probe.inner = None
                if original is None:
                    remove_point(module, SCORES)
                else:
                    attach_point(module, SCORES, original)
