"""timm ``SwinTransformer``: instrumented window attention and block forwards.

Same points as :mod:`harness.model.arch.timm_vit`, per window: ``attn_v`` has shape
(B·num_windows, heads, window_area, d). ``scores`` is q·kᵀ before the relative-position bias,
``bias_table`` the relative-position-bias table itself (before its entries are gathered) and
``scores_biased`` the biased scores (Swin's extra points of the ``psaq`` profile).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention

from harness.model.arch import mlp_and_normed_temporaries, register_swap
from harness.model.instrument import apply_point, only_output_points


class InstrumentedWindowAttention(WindowAttention):
    is_dfq_attention = True
    is_dfq_window = True
    psaq_points = ("scores", "bias_table", "scores_biased")

    def temporary_points(self) -> tuple[str, ...]:
        """The softmax output and the merged heads: made by this forward for those points alone."""
        return ("attn", "proj.in")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn and only_output_points(self):  # e.g. a PSAQ probe on attn_v: timm's fused kernel
            bias = self._get_rel_pos_bias()
            if mask is not None:
                num_windows = mask.shape[0]
                mask = mask.view(1, num_windows, 1, N, N).expand(B_ // num_windows, -1, self.num_heads, -1, -1)
                bias = bias + mask.reshape(-1, self.num_heads, N, N)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
            x = apply_point(self, "attn_v", x)
            return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, -1)))
        q = apply_point(self, "q", q * self.scale)
        k = apply_point(self, "k", k)
        scores = apply_point(self, "scores", q @ k.transpose(-2, -1))
        scores = apply_point(self, "scores_biased", scores + self._rel_pos_bias())
        if mask is not None:
            num_windows = mask.shape[0]
            scores = scores.view(-1, num_windows, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            scores = scores.view(-1, self.num_heads, N, N)
        attn = apply_point(self, "attn", self.attn_drop(self.softmax(scores)))
        x = apply_point(self, "attn_v", attn @ apply_point(self, "v", v))
        x = x.transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))

    def _rel_pos_bias(self) -> torch.Tensor:
        """timm's ``_get_rel_pos_bias``, gathering from the table as the ``bias_table`` point returns it."""
        table = apply_point(self, "bias_table", self.relative_position_bias_table)
        bias = table[self.relative_position_index.view(-1)].view(self.window_area, self.window_area, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)


class InstrumentedSwinBlock(SwinTransformerBlock):
    is_dfq_block = True
    psaq_points = ("residual1", "residual2")

    def temporary_points(self) -> tuple[str, ...]:
        return mlp_and_normed_temporaries(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = apply_point(self, "residual1", x + self.drop_path1(self._attn(self.norm1(x))))
        x = x.reshape(B, -1, C)
        x = apply_point(self, "residual2", x + self.drop_path2(self.mlp(self.norm2(x))))
        return x.reshape(B, H, W, C)


register_swap(WindowAttention, InstrumentedWindowAttention)
register_swap(SwinTransformerBlock, InstrumentedSwinBlock)
