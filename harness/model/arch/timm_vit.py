"""timm ``VisionTransformer`` (ViT, DeiT): instrumented attention, block and embedding forwards.

Points (docs/quantizer.md, The `standard` placement): ``q``, ``k`` (inputs of q·kᵀ; q carries timm's 1/sqrt(d) factor
unless ``scale_after_product`` moves it after the product), ``scores`` (pre-softmax, scaled), ``attn`` (post-softmax),
``v``, ``attn_v`` (the attn·v product, shape (B, heads, N, d), before heads are merged), the
block's ``residual1`` / ``residual2`` sums, and on the model ``tokens`` (class token and patch
tokens, concatenated), ``pos_embed`` (the position-embedding parameter) and ``embedded`` (their
sum). When nothing but ``attn_v`` is read (a PSAQ-ViT probe on the FP model), timm's fused
attention kernel computes it, as timm itself would. ``psaq_points`` names the points the ``psaq``
profile quantizes in each class (docs/quantizer.md, The `psaq` placement).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention, maybe_add_mask, resolve_self_attn_mask
from timm.models.vision_transformer import Block, VisionTransformer

from harness.errors import HarnessError
from harness.model.arch import mlp_and_normed_temporaries, register_swap
from harness.model.instrument import apply_point, only_output_points


class InstrumentedAttention(Attention):
    is_dfq_attention = True
    psaq_points = ("scores",)
    # False: the q point quantizes q·(1/sqrt(d)), timm's order; True: it quantizes q and q·kᵀ is scaled after
    # the product, as RepQ-ViT's DeiT code does (docs/methods.md, RepQ-ViT). The same floats when 1/sqrt(d) is
    # a power of two (d = 4, 16, 64, 256); a calibrator sets it on the instance.
    scale_after_product = False

    def temporary_points(self) -> tuple[str, ...]:
        """The softmax output and the merged heads: made by this forward for those points alone."""
        return ("attn", "proj.in")

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn and only_output_points(self):  # e.g. a PSAQ probe on attn_v: timm's fused kernel
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
            return self._merge(apply_point(self, "attn_v", x), gate)
        q = apply_point(self, "q", q if self.scale_after_product else q * self.scale)
        k = apply_point(self, "k", k)
        scores = q @ k.transpose(-2, -1)
        scores = apply_point(self, "scores", scores * self.scale if self.scale_after_product else scores)
        scores = maybe_add_mask(scores, resolve_self_attn_mask(N, scores, attn_mask, is_causal))
        attn = apply_point(self, "attn", self.attn_drop(scores.softmax(dim=-1)))
        return self._merge(apply_point(self, "attn_v", attn @ apply_point(self, "v", v)), gate)

    def _merge(self, attn_v: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        """Heads merged, then timm's norm, gate and projection."""
        B, _, N, _ = attn_v.shape
        x = self.norm(attn_v.transpose(1, 2).reshape(B, N, self.attn_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class InstrumentedBlock(Block):
    is_dfq_block = True
    psaq_points = ("residual1", "residual2")

    def temporary_points(self) -> tuple[str, ...]:
        return mlp_and_normed_temporaries(self)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        attn_out = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
        x = apply_point(self, "residual1", x + self.drop_path1(self.ls1(attn_out)))
        return apply_point(self, "residual2", x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))))


class InstrumentedVisionTransformer(VisionTransformer):
    psaq_points = ("tokens", "pos_embed", "embedded")

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """timm's own unless a point is attached; then the DeiT layout (class token, then patch
        tokens, plus a learned embedding of every token) with the points read in PSAQ-ViT's order."""
        if only_output_points(self, frozenset()):
            return super()._pos_embed(x)
        if self.cls_token is None or self.reg_token is not None or self.pos_embed is None or self.no_embed_class \
                or self.dynamic_img_size:
            raise HarnessError("points at the position embedding cover ViT/DeiT's layout only: one class token, "
                               "then the patch tokens, plus a learned position embedding of every token")
        tokens = apply_point(self, "tokens", torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1))
        return self.pos_drop(apply_point(self, "embedded", tokens + apply_point(self, "pos_embed", self.pos_embed)))


register_swap(Attention, InstrumentedAttention)
register_swap(Block, InstrumentedBlock)
register_swap(VisionTransformer, InstrumentedVisionTransformer)
