"""AdaLog's per-layer searches (docs/methods.md, AdaLog): each layer's quantizer parameters chosen on its FP
input and output, candidates scored in the authors' order of operations (so near-equal candidates rank as theirs).

A score is the negative squared error, averaged over tokens and the output channels (or the channels of a
per-tensor input), summed over images; weights are scored per output channel, attention operands per head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from harness.api.quantizer import (GELU_SHIFT, adalog_search_values, candidate_batch, fake_quant_adalog,
                                   positive_percentiles, progressive_search, search_table, tensor_percentiles,
                                   uniform_candidates, weight_candidates)
from harness.api.quantizer import fake_quant_offset_after_round

ACTIVATION_FLOOR = 1e-4  # the Linear-input scale candidates' lower bound


@dataclass(frozen=True)
class Search:
    """The search settings (docs/methods.md, AdaLog, Options)."""

    eq_n: int
    rounds: int
    steps: int
    batch_size: int
    memory: int
    quantile: str


def _uniform(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    return ((x / scale).round_() + zero_point).clamp(0, 2 ** bits - 1).sub(zero_point).mul_(scale)


def _top(similarity: torch.Tensor, k: int, dim: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.topk(similarity, k=k, dim=dim).indices.reshape(shape)


class LinearSearch:
    """A Linear's weight (per output channel, asymmetric) and input quantizer: uniform per tensor or per channel
    (a post-LayerNorm input before folding), or AdaLog with GELU's shift (fc2)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, out: torch.Tensor,
                 weight_bits: int, act_bits: int, search: Search) -> None:
        self.weight, self.bias, self.x, self.out = weight, bias, x, out
        self.weight_bits, self.act_bits, self.search = weight_bits, act_bits, search
        b = search.batch_size
        self.parallel = candidate_batch(search.eq_n, search.memory, 8 * x[:b].numel() + 16 * out[:b].numel())
        self.w_scale = self.w_zero_point = None
        self.a_scale = self.a_zero_point = None
        self.log_base: torch.Tensor | None = None  # set for an AdaLog input
        self.shift = None

    # current quantizers
    def quant_weight(self) -> torch.Tensor:
        return fake_quant_offset_after_round(self.weight, self.w_scale, self.w_zero_point, self.weight_bits)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_base is not None:
            return fake_quant_adalog(x, self.a_scale, self.log_base, self.shift, self.act_bits) - self.shift
        return fake_quant_offset_after_round(x, self.a_scale, self.a_zero_point, self.act_bits)

    def _batches(self):
        for start in range(0, len(self.x), self.search.batch_size):
            yield self.x[start:start + self.search.batch_size], self.out[start:start + self.search.batch_size]

    def _chunks(self, count: int):
        return [(p, min(count, p + self.parallel)) for p in range(0, count, self.parallel)]

    # weights
    def weight_fpcs(self, on_output: bool) -> None:
        scales, zps = weight_candidates(self.weight, self.weight_bits, self.search.eq_n, 16, self.search.quantile)
        score = self._weight_output_scores if on_output else self._weight_self_scores
        top = lambda s, z, k: _top(score(s, z), k, 0, (k, -1, 1))  # noqa: E731
        best_s, best_z = progressive_search(scales, zps, top, self.search.eq_n, 16, self.search.steps, dim=0)
        self.w_scale, self.w_zero_point = best_s[0], best_z[0]

    def _weight_self_scores(self, scales: torch.Tensor, zps: torch.Tensor) -> torch.Tensor:
        raw = self.weight.unsqueeze(0)
        parts = []
        for p, q in self._chunks(len(scales)):
            deq = (((raw / scales[p:q]).round_() + zps[p:q]).clamp(0, 2 ** self.weight_bits - 1) - zps[p:q]) * scales[p:q]
            parts.append((-(raw - deq) ** 2).mean(dim=-1))
        return torch.cat(parts, dim=0)

    def _weight_output_scores(self, scales: torch.Tensor, zps: torch.Tensor) -> torch.Tensor:
        per_batch = []
        for x, out in self._batches():
            raw = out.unsqueeze(-2)
            x_q = self.quant_input(x)
            parts = []
            for p, q in self._chunks(len(scales)):
                w = self.weight.unsqueeze(0)
                w_q = (((w / scales[p:q]).round_() + zps[p:q]).clamp(0, 2 ** self.weight_bits - 1) - zps[p:q]) * scales[p:q]
                bias = self.bias.repeat(q - p) if self.bias is not None else None
                sim = F.linear(x_q, w_q.view(-1, self.weight.shape[1]), bias)
                sim = sim.view(*sim.shape[:-1], q - p, self.weight.shape[0])
                similarity = -(raw - sim) ** 2
                if similarity.dim() > 3:
                    similarity = similarity.mean(dim=list(range(1, similarity.dim() - 2)))
                parts.append(similarity.sum(dim=0, keepdim=True))
            per_batch.append(torch.cat(parts, dim=1))
        return torch.cat(per_batch, dim=0).sum(dim=0)

    # uniform inputs
    def activation_fpcs(self, on_output: bool, channel_wise: bool = False) -> None:
        groups = self.x.shape[-1] if channel_wise else 1
        if channel_wise:
            uppers, lowers = tensor_percentiles(self.x.reshape(-1, groups).t(), groups, self.search.quantile)
        else:
            uppers, lowers = tensor_percentiles(self.x, 1, self.search.quantile)
        zero_points = min(16, 2 ** self.act_bits)
        scales, zps = uniform_candidates(uppers, lowers, self.act_bits, self.search.eq_n, zero_points, dim=-1)
        scales = scales.clamp(min=ACTIVATION_FLOOR)
        if on_output:
            top = lambda s, z, k: _top(self._input_output_scores(s, z), k, -1, (1, k))  # noqa: E731
        else:
            top = lambda s, z, k: _top(self._input_self_scores(s, z, channel_wise), k, -1, (groups, k))  # noqa: E731
        best_s, best_z = progressive_search(scales, zps, top, self.search.eq_n, 16, self.search.steps, dim=-1,
                                            floor=ACTIVATION_FLOOR)
        self.a_scale, self.a_zero_point = best_s[:, 0], best_z[:, 0]
        if not channel_wise:
            self.a_scale, self.a_zero_point = self.a_scale[0], self.a_zero_point[0]

    def _input_self_scores(self, scales: torch.Tensor, zps: torch.Tensor, channel_wise: bool) -> torch.Tensor:
        per_batch = []
        for x, _ in self._batches():
            raw = x.unsqueeze(-1)
            parts = []
            for p, q in self._chunks(scales.shape[-1]):
                similarity = -(raw - _uniform(raw, scales[:, p:q], zps[:, p:q], self.act_bits)) ** 2
                if similarity.dim() > 3:
                    similarity = similarity.mean(dim=list(range(1, similarity.dim() - 2)))
                if not channel_wise:
                    similarity = similarity.mean(dim=1, keepdim=True)
                parts.append(similarity.sum(dim=0, keepdim=True))
            per_batch.append(torch.cat(parts, dim=-1))
        return torch.cat(per_batch, dim=0).sum(dim=0)

    def _output_scores(self, quantize: Callable[[torch.Tensor, int, int], torch.Tensor], count: int) -> torch.Tensor:
        """Scores of candidates p..q of an input quantizer: ``quantize(x.unsqueeze(-1), p, q)`` gives their inputs."""
        w_q = self.quant_weight()
        per_batch = []
        for x, out in self._batches():
            raw = out.unsqueeze(-2)
            parts = []
            for p, q in self._chunks(count):
                x_q = quantize(x.unsqueeze(-1), p, q)
                sim = F.linear(x_q.permute(*range(x_q.dim() - 2), -1, -2), w_q, self.bias)
                similarity = (-(raw - sim) ** 2).mean(dim=-1)
                if similarity.dim() > 2:
                    similarity = similarity.mean(dim=list(range(1, similarity.dim() - 1)))
                parts.append(similarity.sum(dim=0, keepdim=True))
            per_batch.append(torch.cat(parts, dim=1))
        return torch.cat(per_batch, dim=0).sum(dim=0, keepdim=True)

    def _input_output_scores(self, scales: torch.Tensor, zps: torch.Tensor) -> torch.Tensor:
        return self._output_scores(lambda x, p, q: _uniform(x, scales[:, p:q], zps[:, p:q], self.act_bits),
                                   scales.shape[-1])

    # AdaLog input (fc2)
    def adalog_fpcs(self, bounds: torch.Tensor, table: torch.Tensor) -> None:
        """The base (q) and the scale of the post-GELU quantizer: the 8 best bases at the current scale, crossed
        with 16 scales between the positive inputs' 90th percentile and maximum (plus the shift), then
        refined as :func:`progressive_search` with width 32."""
        eq_n = self.search.eq_n
        bases = torch.arange(10, 11 + eq_n, device=self.x.device).view(1, -1)
        scores = self._log_scores(self.a_scale.reshape(1, 1).expand(1, eq_n + 1), bases, table)
        base_index = torch.topk(scores, k=8, dim=-1).indices
        line = torch.tensor([i / 15 for i in range(16)], dtype=self.x.dtype, device=self.x.device).view(1, -1)
        scales = bounds[:, 0:1] + (bounds[:, 1:] - bounds[:, 0:1]) * line
        scales = scales.repeat(1, 8)
        bases = bases.gather(-1, base_index).repeat_interleave(16, dim=-1)
        top = lambda s, z, k: torch.topk(self._log_scores(s, z, table), k=k, dim=-1).indices  # noqa: E731
        best_s, best_q = progressive_search(scales, bases, top, eq_n, 32, self.search.steps, dim=-1)
        self.a_scale, self.log_base = best_s.reshape(()), best_q.reshape(())

    def _log_scores(self, scales: torch.Tensor, bases: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        def quantize(x, p, q):
            scale = scales[:, p:q]
            normalized = ((x + self.shift) / scale).clamp(min=1e-15, max=1.0)
            return adalog_search_values(normalized, bases[:, p:q], self.act_bits, table) * scale - self.shift
        return self._output_scores(quantize, min(self.search.eq_n, scales.shape[-1]))

    def calibrate_uniform(self) -> None:
        """Per-tensor input: weights and input on their own errors, then ``rounds`` of both on the output."""
        self.weight_fpcs(on_output=False)
        self.activation_fpcs(on_output=False)
        for _ in range(self.search.rounds):
            self.weight_fpcs(on_output=True)
            self.activation_fpcs(on_output=True)

    def calibrate_post_gelu(self) -> None:
        """fc2: weights on their own error, then ``rounds`` of the AdaLog input and the weights on the output."""
        self.shift = torch.tensor(GELU_SHIFT, dtype=self.x.dtype, device=self.x.device)
        table = search_table(self.act_bits, self.x.dtype, self.x.device)
        self.weight_fpcs(on_output=False)
        bounds = (positive_percentiles(self.x.reshape(-1), [0.9, 1.0]) + self.shift.item()).unsqueeze(0)
        line = torch.tensor([i / (self.search.eq_n - 1) for i in range(self.search.eq_n)], dtype=self.x.dtype,
                            device=self.x.device).view(1, -1)
        self.a_scale = (bounds[:, 0:1] + (bounds[:, 1:] - bounds[:, 0:1]) * line)[:, -2].reshape(())
        self.log_base = torch.tensor(int(37), device=self.x.device)
        for _ in range(self.search.rounds):
            self.adalog_fpcs(bounds, table)
            self.weight_fpcs(on_output=True)


class ConvSearch:
    """The patch embedding: per-output-channel weights scored on the output, one progressive search (its input
    stays in floating point at the authors' 8 bits)."""

    def __init__(self, conv: torch.nn.Conv2d, x: torch.Tensor, out: torch.Tensor, weight_bits: int,
                 search: Search) -> None:
        self.conv, self.x, self.out, self.bits, self.search = conv, x, out, weight_bits, search
        b = search.batch_size
        self.parallel = candidate_batch(search.eq_n, search.memory, 2 * x[:b].numel() + 2 * out[:b].numel())

    def calibrate(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.conv.weight
        scales, zps = weight_candidates(weight.reshape(len(weight), -1), self.bits, self.search.eq_n, None,
                                        self.search.quantile)
        top = lambda s, z, k: _top(self._scores(s, z), k, 0, (k, -1, 1))  # noqa: E731
        best_s, best_z = progressive_search(scales, zps, top, self.search.eq_n, 16, self.search.steps, dim=0)
        return best_s[0, :, 0], best_z[0, :, 0]

    def _scores(self, scales: torch.Tensor, zps: torch.Tensor) -> torch.Tensor:
        conv, weight = self.conv, self.conv.weight
        oc, ic, kw, kh = weight.shape
        per_batch = []
        for start in range(0, len(self.x), self.search.batch_size):
            x = self.x[start:start + self.search.batch_size]
            raw = self.out[start:start + self.search.batch_size].unsqueeze(1)
            parts = []
            for p in range(0, len(scales), self.parallel):
                q = min(len(scales), p + self.parallel)
                w = weight.reshape(oc, -1).unsqueeze(0)
                w_q = (((w / scales[p:q]).round_() + zps[p:q]).clamp(0, 2 ** self.bits - 1) - zps[p:q]).mul_(scales[p:q])
                bias = conv.bias.repeat(q - p) if conv.bias is not None else None
                sim = F.conv2d(x, w_q.view(-1, ic, kw, kh), bias, conv.stride, conv.padding, conv.dilation, conv.groups)
                sim = torch.cat(torch.chunk(sim.unsqueeze(1), chunks=q - p, dim=2), dim=1)
                similarity = torch.mean(-(raw - sim) ** 2, [3, 4])
                parts.append(similarity.sum(dim=0, keepdim=True))
            per_batch.append(torch.cat(parts, dim=1))
        return torch.cat(per_batch, dim=0).sum(dim=0)


class MatMulSearch:
    """An attention product A @ B: both operands uniform per head (q·kᵀ, and v of attn·v), or A AdaLog per tensor
    with scale 1 (the post-softmax map)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bits: int, softmax_bits: int | None,
                 head_wise: bool, search: Search) -> None:
        self.a, self.b, self.out, self.bits, self.search = a, b, out, bits, search
        self.heads = a.shape[1]
        self.head_wise = head_wise
        self.softmax_bits = softmax_bits  # AdaLog A (post-softmax) at these bits; None: A uniform
        cb = search.batch_size
        self.parallel = candidate_batch(search.eq_n, search.memory,
                                        4 * a.numel() + 4 * b.numel() + 8 * out[:cb].numel())
        self.params: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.log_base = torch.tensor(37, device=a.device)

    def quant(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "A" and self.softmax_bits is not None:
            one = torch.ones((), dtype=x.dtype, device=x.device)
            return fake_quant_adalog(x, one, self.log_base, torch.zeros_like(one), self.softmax_bits)
        scale, zero_point = self.params[name]
        return fake_quant_offset_after_round(x, scale, zero_point, self.bits)

    def _candidates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        groups = self.heads if self.head_wise else 1
        source = x.transpose(0, 1).contiguous() if self.head_wise else x
        uppers, lowers = tensor_percentiles(source, groups, self.search.quantile)
        shape = (2, 1, groups, 1, 1)
        return uniform_candidates(uppers.reshape(shape), lowers.reshape(shape), self.bits, self.search.eq_n,
                                  min(16, 2 ** (self.bits - 1)), dim=0)

    def _scores(self, name: str, make: Callable[[torch.Tensor, int, int], torch.Tensor], count: int,
                per_head: bool) -> torch.Tensor:
        per_batch = []
        for start in range(0, len(self.a), self.search.batch_size):
            a = self.a[start:start + self.search.batch_size]
            b = self.b[start:start + self.search.batch_size]
            raw = self.out[start:start + self.search.batch_size].unsqueeze(0)
            fixed = (self.quant("B", b) if name == "A" else self.quant("A", a)).unsqueeze(0)
            parts = []
            for p in range(0, count, self.parallel):
                q = min(count, p + self.parallel)
                varied = make(a.squeeze(0) if name == "A" else b.squeeze(0), p, q)
                sim = varied @ fixed if name == "A" else fixed @ varied
                similarity = -(raw - sim) ** 2
                similarity = torch.mean(similarity, dim=list(range(3 if per_head else 2, similarity.dim())))
                parts.append(similarity.sum(dim=1, keepdim=True))
            per_batch.append(torch.cat(parts, 0))
        return torch.cat(per_batch, dim=1).sum(dim=1, keepdim=not per_head)

    def fpcs(self, name: str) -> None:
        scales, zps = self._candidates(self.a if name == "A" else self.b)

        def top(s, z, k):
            make = lambda x, p, q: _uniform(x, s[p:q], z[p:q], self.bits)  # noqa: E731
            similarity = self._scores(name, make, len(s), self.head_wise)
            return torch.topk(similarity, k=k, dim=0).indices.view(k, 1, -1, 1, 1)
        best_s, best_z = progressive_search(scales, zps, top, self.search.eq_n, 16, self.search.steps, dim=0)
        self.params[name] = (best_s[0, 0], best_z[0, 0])

    def search_log_base(self, table: torch.Tensor) -> None:
        bases = torch.arange(10, 11 + self.search.eq_n, device=self.a.device).view(-1, 1, 1, 1, 1)
        make = lambda x, p, q: adalog_search_values(x, bases[p:q], self.softmax_bits, table)  # noqa: E731
        similarity = self._scores("A", make, self.search.eq_n, per_head=False)
        best = torch.topk(similarity, k=1, dim=0).indices.view(1, 1, 1, 1, 1)
        self.log_base = bases.gather(0, best).reshape(())

    def calibrate(self) -> None:
        initial = {}
        for name, x in (("A", self.a), ("B", self.b)):
            if name == "A" and self.softmax_bits is not None:
                continue
            scales, zps = self._candidates(x)
            initial[name] = (scales[-2, 0], zps[-2, 0])
        self.params.update(initial)
        if self.softmax_bits is None:
            for _ in range(self.search.rounds):
                self.fpcs("A")
                self.fpcs("B")
            return
        table = search_table(self.softmax_bits, self.a.dtype, self.a.device)
        for _ in range(self.search.rounds):
            self.search_log_base(table)
            self.fpcs("B")
