"""mmdet / mmseg ``SwinTransformer`` backbones: instrumented window attention (``WindowMSA``) and blocks.

Both libraries ship the same ``WindowMSA`` code in two classes; one instrumented forward serves
both. Points as in :mod:`harness.model.arch.timm_swin` (``attn_v`` per window, image-major windows).
Blocks (``SwinBlock``, called with the feature map's shape) keep the library's forward: their
residual sums are points of the ``psaq`` profile only, which covers timm models; they are marked as
blocks so block-wise calibrators find them.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from harness.model.arch import marked_block, register_swap
from harness.model.instrument import apply_point


class _InstrumentedWindowMSA(nn.Module):
    is_dfq_attention = True
    psaq_profile = False  # the `psaq` placement is written for timm's modules
    is_dfq_window = True

    def temporary_points(self) -> tuple[str, ...]:
        """The softmax output and the merged heads: made by this forward for those points alone."""
        return ("attn", "proj.in")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        q = apply_point(self, "q", q * self.scale)
        k = apply_point(self, "k", k)
        scores = apply_point(self, "scores", q @ k.transpose(-2, -1))
        area = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(area, area, -1)
        scores = apply_point(self, "scores_biased", scores + bias.permute(2, 0, 1).unsqueeze(0))
        if mask is not None:
            num_windows = mask.shape[0]
            scores = scores.view(B_ // num_windows, num_windows, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            scores = scores.view(-1, self.num_heads, N, N)
        attn = apply_point(self, "attn", self.attn_drop(self.softmax(scores)))
        x = apply_point(self, "attn_v", attn @ apply_point(self, "v", v))
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, C)))


def register(library_module: ModuleType) -> None:
    """Instrument the ``WindowMSA`` and mark the ``SwinBlock`` of ``library_module`` (mmdet's or mmseg's swin module)."""
    original = library_module.WindowMSA
    register_swap(original, type(f"Instrumented{original.__qualname__}", (_InstrumentedWindowMSA, original),
                                 {"__module__": __name__}))
    register_swap(library_module.SwinBlock, marked_block(library_module.SwinBlock, __name__))
