"""Uniform quantizers searched on a grid of ranges and zero points by output error (docs/methods.md, APHQ-ViT,
Calibration: the search APHQ-ViT and FIMA-Q inherit from AdaLog's code).

Every search runs on the layer's floating-point input and output over the first calibration images:

- a Linear's per-output-channel weight parameters and its input's per-tensor (or per-channel) parameters come
  from a grid of ``count`` candidates: zero points 2^(b-1) - z/2 .. 2^(b-1) + z/2 - 1 (z = min(16, 2^b)) crossed
  with ``count // z`` ranges spaced evenly from the 10th-90th percentile range to the full range. Each is first
  chosen by its own quantization error, then ``rounds`` times alternately by the layer's output error;
- an attention matmul operand (q, k, the post-softmax map, v) gets per-head parameters from ``count`` upper and
  lower bounds spaced evenly between its 99th and 99.999th percentiles (and the mirrored lower ones), chosen by
  the matmul's output error with the other operand quantized; each round then moves the upper bound with the
  lower one fixed and the other way round;
- the patch embedding's per-output-channel weights get ``count`` percentile ranges (99th to 99.99th percentile,
  spaced by a square root), chosen and refined the same way; its input stays unquantized (the authors'
  convolution passes it through at their 8 input bits), so its quantizer is removed.

Percentile arguments are float32 numbers cast to the data's dtype, as the authors' ``torch.tensor([...])`` is.
Scores are summed over batches of ``batch_size`` images of per-image means; the first best candidate wins.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F

# candidates evaluated at once: bounds the memory of an (images, tokens, candidates, channels) tensor
_CHUNK_ELEMENTS = 1 << 24


@dataclass
class Grid:
    """Candidate (scale, zero point) pairs along dimension 0, broadcastable against the quantized tensor."""

    scale: torch.Tensor
    zero_point: torch.Tensor

    def pick(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale.gather(0, index), self.zero_point.gather(0, index)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """(clamp(round(x / s) + z, 0, 2^b - 1) - z) s: the searched quantizers' arithmetic (in place on the
    quotient: the searches run without gradients)."""
    out = x / scale
    return out.round_().add_(zero_point).clamp_(0, 2 ** bits - 1).sub_(zero_point).mul_(scale)


def _float32_quantiles(x: torch.Tensor, qs: list[float], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantiles at q and 1 - q, both formed in float32 and cast to ``x``'s dtype."""
    q = torch.tensor(qs)
    return (torch.quantile(x, q.to(x.dtype), dim=dim), torch.quantile(x, (1 - q).to(x.dtype), dim=dim))


def _zero_point_grid(bits: int, count: int) -> tuple[int, int, torch.Tensor]:
    zero_points = min(16, 2 ** bits)
    ranges = count // zero_points
    first = int(2 ** (bits - 1) - zero_points / 2)
    return zero_points, ranges, torch.arange(first, first + zero_points).repeat_interleave(ranges)


def weight_grid(rows: torch.Tensor, bits: int, count: int) -> Grid:
    """Per-row candidates (candidates, rows, 1) of a (rows, values) weight."""
    zero_points, ranges, zp = _zero_point_grid(bits, count)
    upper, lower = _float32_quantiles(rows, [0.9, 1.0], dim=-1)
    narrow, full = upper[0] - lower[0], upper[1] - lower[1]
    spans = narrow + torch.linspace(0, 1, steps=ranges)[:, None] * (full - narrow)
    scale = spans.repeat(zero_points, 1)[..., None] / (2 ** bits - 1)
    return Grid(scale, zp.to(rows.dtype)[:, None, None].expand_as(scale).clone())


def activation_grid(x: torch.Tensor, bits: int, count: int, channel_wise: bool) -> Grid:
    """Candidates (candidates, 1) per tensor or (candidates, channels) per channel of the last dimension."""
    zero_points, ranges, zp = _zero_point_grid(bits, count)
    rows = x.reshape(-1, x.shape[-1]).t() if channel_wise else x.reshape(1, -1)
    upper, lower = _float32_quantiles(rows, [0.9, 1.0], dim=-1)  # (2, rows)
    narrow, full = upper[0] - lower[0], upper[1] - lower[1]
    spans = narrow + torch.linspace(0, 1, steps=ranges)[:, None] * (full - narrow)
    scale = (spans.repeat(zero_points, 1) / (2 ** bits - 1)).clamp(min=1e-4)
    return Grid(scale, zp.to(x.dtype)[:, None].expand_as(scale).clone())


def _best(scores: torch.Tensor) -> torch.Tensor:
    return scores.argmax(dim=0, keepdim=True)


def _chunks(total: int, per_candidate: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, per_candidate))
    return [slice(start, min(total, start + step)) for start in range(0, total, step)]


def search_weight_alone(weight: torch.Tensor, grid: Grid, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's candidate with the smallest mean squared quantization error of the weight itself."""
    rows = weight.reshape(weight.shape[0], -1)
    error = quantize(rows[None], grid.scale, grid.zero_point, bits).sub_(rows[None]).square_().mean(dim=-1)  # (K, rows)
    index = _best(-error)[..., None]
    return grid.pick(index)[0][0], grid.pick(index)[1][0]


def search_activation_alone(x: torch.Tensor, grid: Grid, bits: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate (per channel of the last dimension, or per tensor) with the smallest quantization error:
    per image the mean over tokens (and over channels for one per tensor), summed over images."""
    channel_wise = grid.scale.shape[1] > 1
    total = torch.zeros(grid.scale.shape, dtype=x.dtype)
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        tokens = batch.reshape(len(batch), -1, batch.shape[-1])  # (b, tokens, C)
        for part in _chunks(len(grid.scale), tokens[0].numel()):
            candidates = quantize(tokens[..., None], grid.scale[part].t(), grid.zero_point[part].t(), bits)
            error = candidates.sub_(tokens[..., None]).square_().mean(dim=1)  # (b, C, K)
            if not channel_wise:
                error = error.mean(dim=1, keepdim=True)
            total[part] -= error.sum(dim=0).t()
    index = _best(total)
    scale, zero_point = grid.pick(index)
    return scale[0], zero_point[0]


def search_linear(weight: torch.Tensor, bias: torch.Tensor | None, inputs: torch.Tensor, outputs: torch.Tensor,
                  weight_bits: int, input_bits: int, count: int, rounds: int, batch_size: int,
                  input_grid: Grid | None = None) -> dict[str, torch.Tensor]:
    """A Linear's per-output-channel weight and per-tensor input parameters (docs/methods.md, APHQ-ViT,
    Calibration): both chosen alone, then ``rounds`` times weight and input by the output's squared error."""
    weight_candidates = weight_grid(weight, weight_bits, count)
    input_candidates = input_grid or activation_grid(inputs, input_bits, count, channel_wise=False)
    w_scale, w_zp = search_weight_alone(weight, weight_candidates, weight_bits)
    a_scale, a_zp = search_activation_alone(inputs, input_candidates, input_bits, batch_size)
    for _ in range(rounds):
        w_scale, w_zp = _search_linear_weight(weight, bias, inputs, outputs, weight_candidates, weight_bits,
                                              quantize(inputs, a_scale, a_zp, input_bits), batch_size)
        a_scale, a_zp = _search_linear_input(quantize(weight, w_scale, w_zp, weight_bits), bias, inputs, outputs,
                                             input_candidates, input_bits, batch_size)
    return {"weight_scale": w_scale, "weight_zero_point": w_zp, "scale": a_scale, "zero_point": a_zp}


def _search_linear_weight(weight, bias, inputs, outputs, grid: Grid, bits: int, quantized_inputs: torch.Tensor,
                          batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    out_features = weight.shape[0]
    total = torch.zeros(grid.scale.shape[:2], dtype=weight.dtype)  # (K, out)
    for start in range(0, len(inputs), batch_size):
        x = quantized_inputs[start:start + batch_size]
        reference = outputs[start:start + batch_size]
        for part in _chunks(len(grid.scale), x[0].numel() // x.shape[-1] * out_features * len(x)):
            scale, zero_point = grid.scale[part], grid.zero_point[part]
            candidates = quantize(weight[None], scale, zero_point, bits).reshape(-1, weight.shape[1])
            out = F.linear(x, candidates, None if bias is None else bias.repeat(len(scale)))
            out = out.reshape(*out.shape[:-1], len(scale), out_features)  # (b, *, K, out)
            error = out.sub_(reference[..., None, :]).square_()  # in place: (y - ŷ)² = (ŷ - y)², bit for bit
            if error.dim() > 3:
                error = error.mean(dim=tuple(range(1, error.dim() - 2)))
            total[part] -= error.sum(dim=0)
    index = _best(total)[..., None]
    scale, zero_point = grid.pick(index)
    return scale[0], zero_point[0]


def _search_linear_input(quantized_weight, bias, inputs, outputs, grid: Grid, bits: int,
                         batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    total = torch.zeros(len(grid.scale), dtype=inputs.dtype)
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size]
        reference = outputs[start:start + batch_size]
        for part in _chunks(len(grid.scale), (x.numel() + reference.numel())):
            scale, zero_point = grid.scale[part, 0], grid.zero_point[part, 0]
            candidates = quantize(x[..., None], scale, zero_point, bits).movedim(-1, -2)  # (b, *, K, in)
            error = F.linear(candidates, quantized_weight, bias).sub_(reference[..., None, :]).square_().mean(dim=-1)
            if error.dim() > 2:
                error = error.mean(dim=tuple(range(1, error.dim() - 1)))
            total[part] -= error.sum(dim=0)
    index = _best(total[:, None])
    scale, zero_point = grid.pick(index)
    return scale[0, 0], zero_point[0, 0]


def matmul_bounds(x: torch.Tensor, count: int, per_head: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper and lower bound candidates (count + 1, heads or 1) of a (B, heads, ...) matmul operand."""
    rows = x.transpose(0, 1).reshape(x.shape[1], -1) if per_head else x.reshape(1, -1)
    upper, lower = _float32_quantiles(rows, [0.99, 0.99999], dim=-1)  # (2, heads)
    steps = torch.linspace(0, 1, steps=count + 1)[:, None]
    return upper[0] + steps * (upper[1] - upper[0]), lower[1] + steps * (lower[0] - lower[1])


def _bounds_grid(upper: torch.Tensor, lower: torch.Tensor, bits: int) -> Grid:
    scale = (upper - lower) / (2 ** bits - 1)
    return Grid(scale, -(lower / scale).round())


def search_matmul(a: torch.Tensor, b: torch.Tensor, a_bits: int, b_bits: int, count: int, rounds: int,
                  per_head: bool, batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-head parameters of both operands of ``a @ b`` (shapes (B, heads, ...)) by the product's error: each
    from ``count`` bound pairs with the other operand quantized, then ``rounds`` times each bound in turn."""
    reference = a @ b
    bounds = {"a": matmul_bounds(a, count, per_head), "b": matmul_bounds(b, count, per_head)}
    grids = {key: _bounds_grid(*value, a_bits if key == "a" else b_bits) for key, value in bounds.items()}
    params = {key: (grid.scale[-2], grid.zero_point[-2]) for key, grid in grids.items()}
    index = {}

    def search(key: str, grid: Grid) -> torch.Tensor:
        bits = a_bits if key == "a" else b_bits
        total = torch.zeros((count, grid.scale.shape[1]), dtype=a.dtype)
        for start in range(0, len(a), batch_size):
            xa, xb = a[start:start + batch_size], b[start:start + batch_size]
            target = reference[start:start + batch_size]
            other = (quantize(xb, *_heads(params["b"], xb), b_bits) if key == "a"
                     else quantize(xa, *_heads(params["a"], xa), a_bits))
            for part in _chunks(count, target.numel()):
                scale, zero_point = _heads((grid.scale[part], grid.zero_point[part]), xa)
                own = xa if key == "a" else xb
                candidates = quantize(own[None], scale, zero_point, bits)
                out = candidates @ other[None] if key == "a" else other[None] @ candidates
                error = out.sub_(target[None]).square_()
                error = error.mean(dim=tuple(range(3 if per_head else 2, error.dim())))  # (K, b, heads or 1)
                total[part] -= error.reshape(error.shape[0], error.shape[1], -1).sum(dim=1)
        best = _best(total)
        params[key] = (grid.scale.gather(0, best)[0], grid.zero_point.gather(0, best)[0])
        return best

    for key in ("a", "b"):
        index[key] = search(key, grids[key])
    for _ in range(rounds):
        for key in ("a", "b"):
            upper, lower = bounds[key]
            bits = a_bits if key == "a" else b_bits
            for move_lower in (True, False):
                pair = ((upper.gather(0, index[key]), lower) if move_lower else (upper, lower.gather(0, index[key])))
                index[key] = search(key, _bounds_grid(*pair, bits))
    return params


def _heads(pair: tuple[torch.Tensor, torch.Tensor], like: torch.Tensor):
    """(K, heads) or (heads,) parameters shaped to broadcast over (K, B, heads, ...) or (B, heads, ...)."""
    scale, zero_point = pair
    tail = [1] * (like.dim() - 2)
    if scale.dim() == 2:
        return scale.reshape(scale.shape[0], 1, -1, *tail), zero_point.reshape(zero_point.shape[0], 1, -1, *tail)
    return scale.reshape(1, -1, *tail), zero_point.reshape(1, -1, *tail)


def search_patch_embedding(conv: torch.nn.Conv2d, inputs: torch.Tensor, outputs: torch.Tensor, weight_bits: int,
                           input_bits: int, count: int, rounds: int, batch_size: int) -> dict[str, torch.Tensor]:
    """The patch embedding's per-output-channel weight parameters from ``count`` percentile ranges by the output's
    error on its unquantized input, then in one round the upper bound with the lower one fixed and the other way
    round. The authors' convolution passes its input through unquantized at ``input_bits`` >= 8 (their
    ``qconv_a_bit`` 8), and their later rounds only search that input's scale below 8 bits, which is not
    implemented here."""
    if input_bits < 8:
        raise ValueError("the patch embedding's input search below 8 bits is not implemented")
    quantized_inputs = inputs
    rows = conv.weight.reshape(conv.out_channels, -1)
    pct = torch.tensor([0.99 + (0.9999 - 0.99) * (i / (count - 1)) ** 0.5 for i in range(count)] + [1.0])
    upper = torch.quantile(rows, pct.to(rows.dtype), dim=-1)[..., None]  # (count + 1, oc, 1)
    lower = torch.quantile(rows, (1 - pct).to(rows.dtype), dim=-1)[..., None]

    def search(grid: Grid) -> torch.Tensor:
        total = torch.zeros((count, conv.out_channels), dtype=rows.dtype)
        for start in range(0, len(inputs), batch_size):
            x, target = quantized_inputs[start:start + batch_size], outputs[start:start + batch_size]
            for part in _chunks(count, target.numel()):
                scale, zero_point = grid.scale[part], grid.zero_point[part]
                weights = quantize(rows[None], scale, zero_point, weight_bits).reshape(-1, *conv.weight.shape[1:])
                bias = None if conv.bias is None else conv.bias.repeat(len(scale))
                out = F.conv2d(x, weights, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
                out = out.reshape(len(x), len(scale), conv.out_channels, *out.shape[2:])
                total[part] -= out.sub_(target[:, None]).square_().mean(dim=(3, 4)).sum(dim=0)
        return _best(total)[..., None]

    index = search(_bounds_grid(upper, lower, weight_bits))
    for _ in range(min(rounds, 1)):
        for move_lower in (True, False):
            pair = (upper.gather(0, index), lower) if move_lower else (upper, lower.gather(0, index))
            index = search(_bounds_grid(*pair, weight_bits))
    grid = _bounds_grid(*pair, weight_bits) if rounds else _bounds_grid(upper, lower, weight_bits)
    scale, zero_point = grid.pick(index)
    return {"weight_scale": scale[0, :, 0], "weight_zero_point": zero_point[0, :, 0]}

def calibrate_by_grid_search(qmodel: torch.nn.Module, images: torch.Tensor, device: torch.device, capture_batch: int,
                             *, count: int, rounds: int, batch_size: int, per_head: bool, token_wise: bool,
                             input_bits: int, reparameterize: bool) -> dict[str, int]:
    """Every quantizer of ``qmodel`` searched on ``images`` (docs/methods.md, APHQ-ViT, Calibration), in place.

    Each layer's search sees the floating-point model's values. A LayerNorm-fed Linear (qkv, the MLP's first
    Linear, patch merging's reduction) at equal weight and activation bits first gets per-channel input
    parameters, folded into the norm with the rounded mean zero point (:func:`harness.quant.reparam.fold_channel_params`),
    and is then searched per tensor on its reparameterized input. ``token_wise``: after the search, per-tensor
    input scales of token sequences and the matmul operands' per-head scales are repeated per token (per
    channel for v), the shapes FIMA-Q's reconstruction then learns.
    """
    from harness.model.arch import is_instrumented_attention
    from harness.model.instrument import get_point, remove_point
    from harness.quant.capture import LAYER_INPUT, Target, capture, floating_point
    from harness.quant.modules import weight_quantized_layers
    from harness.quant.reparam import fold_channel_params, norm_linear_pairs

    def fp_values(targets: dict[str, Target]) -> dict[str, torch.Tensor]:
        with floating_point(qmodel):
            return capture(qmodel, images, targets, device, capture_batch)

    for module in qmodel.modules():
        if is_instrumented_attention(module) and hasattr(module, "scale_after_product"):
            module.scale_after_product = True  # q quantized before 1/sqrt(d), as their DeiT code
    norms = {id(linear): norm for norm, linear in norm_linear_pairs(qmodel)}
    folded = 0
    for _, layer in weight_quantized_layers(qmodel):
        quantizer = get_point(layer, "in")
        inputs = fp_values({"x": Target(layer, LAYER_INPUT)})["x"]
        with torch.no_grad():
            if isinstance(layer, torch.nn.Conv2d):
                outputs = F.conv2d(inputs, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation,
                                   layer.groups)
                if quantizer is not None:  # unquantized at >= 8 bits, as the authors' convolution
                    remove_point(layer, "in")
                    quantizer = None
                found = search_patch_embedding(layer, inputs, outputs, layer.weight_bits, input_bits, count, rounds,
                                               batch_size)
            else:
                outputs = F.linear(inputs, layer.weight, layer.bias)
                bits = quantizer.bits if quantizer is not None else 32
                norm = norms.get(id(layer))
                if reparameterize and norm is not None and quantizer is not None and bits == layer.weight_bits:
                    grid = activation_grid(inputs, bits, count, channel_wise=True)
                    scale, zero_point = search_activation_alone(inputs, grid, bits, batch_size)
                    target_scale, target_zero_point = fold_channel_params(norm, layer, scale, zero_point,
                                                                          round_zero_point=True)
                    ratio = scale / target_scale
                    inputs = inputs / ratio - (-zero_point * scale / ratio - (-target_zero_point * target_scale))
                    folded += 1
                found = search_linear(layer.weight, layer.bias, inputs, outputs, layer.weight_bits, bits, count,
                                      rounds, batch_size)
            layer.set_weight_params(found["weight_scale"], found["weight_zero_point"])
            if quantizer is not None:
                scale, zero_point = found["scale"].reshape(()), found["zero_point"].reshape(())
                if token_wise and inputs.dim() == 3:
                    scale, zero_point = (p.expand(inputs.shape[1], 1).clone() for p in (scale, zero_point))
                quantizer.set_params(scale, zero_point)
    for attention in [m for m in qmodel.modules() if is_instrumented_attention(m)]:
        points = {name: get_point(attention, name) for name in ("q", "k", "attn", "v")}
        values = fp_values({name: Target(attention, name) for name, point in points.items() if point is not None})
        with torch.no_grad():
            for a, b in (("q", "k"), ("attn", "v")):
                if points[a] is None or points[b] is None:
                    continue
                second = values[b].transpose(-2, -1) if b == "k" else values[b]
                found = search_matmul(values[a], second, points[a].bits, points[b].bits, count, rounds, per_head,
                                      batch_size)
                heads = values[a].shape[1]
                for name, (scale, zero_point) in ((a, found["a"]), (b, found["b"])):
                    scale, zero_point = (p.reshape(-1, 1, 1).expand(heads, 1, 1) for p in (scale, zero_point))
                    if token_wise:
                        shape = ((heads, 1, values[name].shape[-1]) if name == "v"
                                 else (heads, values[name].shape[-2], 1))
                        scale, zero_point = scale.expand(shape), zero_point.expand(shape)
                    points[name].set_params(scale.contiguous(), zero_point.contiguous())
    return {"reparameterized_norms": folded}
