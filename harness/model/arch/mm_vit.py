"""mmseg ``VisionTransformer`` backbones: instrumented ``nn.MultiheadAttention``.

mmseg's ViT/DeiT layers call mmcv's ``MultiheadAttention``, which wraps torch's
``nn.MultiheadAttention`` (one packed input projection, fused kernel). The instrumented class
adopts the packed projection as a ``qkv`` Linear sharing its parameters, so the quantizer treats
it like timm's ``qkv`` (weights per output channel, input quantized), and computes the attention
explicitly with the points of :mod:`harness.model.arch.timm_vit` (``attn_v``: (B, heads, N, d)). The
encoder layers keep mmseg's forward and are marked as blocks for block-wise calibrators.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from harness.errors import HarnessError
from harness.model.arch import marked_block, register_swap
from harness.model.instrument import apply_point


class InstrumentedMultiheadAttention(nn.MultiheadAttention):
    is_dfq_attention = True
    psaq_profile = False  # the `psaq` placement is written for timm's modules

    def dfq_adopt(self) -> None:
        if not self._qkv_same_embed_dim:
            raise HarnessError("the quantizer needs nn.MultiheadAttention with one packed input projection")
        qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=self.in_proj_bias is not None, device="meta")
        qkv.weight, qkv.bias = self.in_proj_weight, self.in_proj_bias
        self.qkv = qkv

    def dfq_release(self) -> None:
        del self.qkv

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask=None,
                need_weights: bool = False, attn_mask=None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if not (_same(query, key) and _same(key, value)) or key_padding_mask is not None or attn_mask is not None \
                or is_causal:
            raise HarnessError("the quantizer's nn.MultiheadAttention covers unmasked self-attention only")
        x = query if self.batch_first else query.transpose(0, 1)  # (B, N, C)
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = apply_point(self, "q", q * self.head_dim ** -0.5)
        k = apply_point(self, "k", k)
        scores = apply_point(self, "scores", q @ k.transpose(-2, -1))
        attn = apply_point(self, "attn", nn.functional.dropout(scores.softmax(dim=-1), self.dropout, self.training))
        x = apply_point(self, "attn_v", attn @ apply_point(self, "v", v))
        x = self.out_proj(x.transpose(1, 2).reshape(B, N, C))
        return (x if self.batch_first else x.transpose(0, 1)), None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same view of the same memory (mmcv passes self-attention inputs as separately transposed views)."""
    return a is b or (a.shape == b.shape and a.stride() == b.stride() and a.data_ptr() == b.data_ptr())


def register(library_module: ModuleType) -> None:
    """mmseg's ViT builds torch's ``nn.MultiheadAttention`` (through mmcv) inside its ``TransformerEncoderLayer``."""
    register_swap(nn.MultiheadAttention, InstrumentedMultiheadAttention)
    register_swap(library_module.TransformerEncoderLayer, marked_block(library_module.TransformerEncoderLayer, __name__))
