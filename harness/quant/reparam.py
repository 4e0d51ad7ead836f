"""Per-channel activation quantization folded into per-tensor by reparameterization (docs/quantizer.md,
Reparameterized per-channel quantizers).

A LayerNorm whose output feeds one Linear can carry a per-channel scale s_c and zero point z_c on
that output at no inference cost: with the per-tensor target s = mean(s_c), z = mean(z_c),
r_c = s_c / s and b_c = -z_c s_c / r_c + z s, the norm's affine becomes (γ / r, β / r - b) and the
Linear's weight columns are multiplied by r with its bias raised by W' b. The Linear computes the same
function of the norm's input, and the quantizer at its input becomes per-tensor (s, z).
"""
from __future__ import annotations

import torch
from torch import nn

from harness.model.arch import block_mlp, is_instrumented_block


def norm_linear_pairs(model: nn.Module) -> list[tuple[nn.LayerNorm, nn.Linear]]:
    """(LayerNorm, the Linear its output feeds), in forward order: norm1 → qkv and norm2 → the MLP's
    first Linear in every timm ViT/DeiT/Swin block and mmdet/mmseg Swin block, and patch merging's
    norm → reduction (timm's and mmcv's)."""
    pairs = []
    for module in model.modules():
        if is_instrumented_block(module):
            pairs += _block_pairs(module)
        elif type(module).__name__ == "PatchMerging":  # norm, then reduction, in both libraries
            pairs.append((getattr(module, "norm", None), getattr(module, "reduction", None)))
    return [(norm, linear) for norm, linear in pairs
            if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and isinstance(linear, nn.Linear)]


def _block_pairs(block: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    mlp = block_mlp(block)
    if mlp is None:
        return []
    if hasattr(block, "mlp"):  # timm: attn.qkv
        return [(block.norm1, block.attn.qkv), (block.norm2, mlp.fc1)]
    window = getattr(getattr(block, "attn", None), "w_msa", None)  # mmdet / mmseg Swin: attn.w_msa.qkv
    return [(block.norm1, window.qkv), (block.norm2, mlp.fc1)] if window is not None else []


@torch.no_grad()
def fold_channel_params(norm: nn.LayerNorm, linear: nn.Linear, scale: torch.Tensor, zero_point: torch.Tensor,
                        round_zero_point: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold per-channel (scale, zero point) of ``norm``'s output into ``norm`` and ``linear``, in place;
    returns the per-tensor (scale, zero point) that now quantizes ``linear``'s input. ``round_zero_point``:
    the target zero point is the rounded mean (AdaLog's code and its descendants, docs/methods.md, APHQ-ViT)."""
    scale, zero_point = scale.reshape(-1), zero_point.reshape(-1)
    channel_low = -zero_point * scale
    target_scale, target_zero_point = torch.mean(scale), torch.mean(zero_point)
    if round_zero_point:
        target_zero_point = target_zero_point.round()
    target_low = -target_zero_point * target_scale
    ratio = scale / target_scale
    shift = channel_low / ratio - target_low
    norm.weight.div_(ratio)
    norm.bias.div_(ratio).sub_(shift)
    linear.weight.mul_(ratio)
    correction = torch.mm(linear.weight, shift.reshape(-1, 1)).reshape(-1)
    if linear.bias is None:
        linear.bias = nn.Parameter(correction)
    else:
        linear.bias.add_(correction)
    return target_scale, target_zero_point
