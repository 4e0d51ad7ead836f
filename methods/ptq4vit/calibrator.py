"""Calibrator ``ptq4vit``: PTQ4ViT's quantizers and Hessian-guided scale search (docs/methods.md, PTQ4ViT).

1. The calibration set runs through the FP model: once whole, for the target distribution, then in
   batches of ``gradient_batch_size`` with a backward pass of the KL divergence to that distribution.
   Every quantized layer and attention product keeps its FP inputs, its FP output and the gradient
   of the loss with respect to that output.
2. Each of them then searches its scales on those FP tensors alone (the layers before it stay FP, the
   authors' parallel paradigm): symmetric scales among ``candidates`` fractions in [alpha, beta) of
   the max-based scale, weight and input alternately for ``rounds`` rounds, the candidate with the best
   output metric winning (:func:`harness.quant.search.output_similarity`). Weights per tensor (qkv: per
   q, k, v block; the patch embedding per output channel), Linear inputs per tensor, the attention
   products' operands per head. Post-softmax maps take the twin-uniform quantizer (a power-of-two split
   searched), post-GELU activations the signed twin-uniform one (negative range fixed at GELU's minimum).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import ATTENTION, CALIBRATORS, CalibrationContext, Calibrator, HarnessError
from harness.api import at_least, positive
from harness.api.quantizer import (ActQuantizer, QuantConv2d, act_quantizers, attach_point, best_candidate,
                                   fake_quant_symmetric_signed, fake_quant_twin_signed, fake_quant_twin_uniform,
                                   fraction_candidates, get_point, is_instrumented_attention, output_similarity,
                                   remove_point, unquantized_weights, weight_quantized_layers)

GELU_MINIMUM = 0.16997124254703522  # -min GELU(x), the negative range of post-GELU activations


@dataclass
class PTQ4ViTOptions:
    """Defaults of the authors' code for PTQ4ViT with 32 images (docs/methods.md, PTQ4ViT)."""

    metric: str = "hessian"  # hessian, l2 or cosine (Base PTQ's)
    alpha: float = positive(0.01)  # smallest candidate fraction of the max-based scale
    beta: float = positive(1.2)  # candidate fractions alpha + i (beta - alpha) / candidates
    candidates: int = at_least(1, 100)  # candidate scales searched per quantizer
    rounds: int = at_least(1, 3)  # alternating weight / input searches
    twin_softmax: bool = True  # twin-uniform post-softmax quantizer, else symmetric per head
    twin_gelu: bool = True  # signed twin-uniform post-GELU quantizer, else symmetric
    softmax_splits: int = at_least(1, 20)  # split candidates 2^0 .. 2^-(softmax_splits - 1)
    gradient_batch_size: int = at_least(1, 4)  # images per backward pass of the task loss
    quantize_image: bool = False  # the authors leave the patch embedding's input (the image) FP
    # candidates scored per wide product: as many as fill the authors' memory budget of float32 elements
    search_memory_gib: float = positive(3.0)  # Linear layers and attention products
    conv_search_memory_gib: float = positive(15.0)  # the patch embedding

    def __post_init__(self) -> None:
        if self.metric not in ("hessian", "l2", "cosine"):
            raise ValueError("metric must be hessian, l2 or cosine")
        if not 0 <= self.alpha < self.beta:
            raise ValueError("need 0 <= alpha < beta")
        if self.candidates < 1 or self.rounds < 1 or self.softmax_splits < 1 or self.gradient_batch_size < 1:
            raise ValueError("candidates, rounds, softmax_splits and gradient_batch_size must be positive")


class _Recorder:
    """Observer that keeps every tensor its quantizer sees (detached, on the CPU)."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []

    def update(self, x: torch.Tensor) -> None:
        self.tensors.append(x.detach().cpu())

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise HarnessError("a recording observer has no range")


class _Capture(nn.Module):
    """Identity at a point that keeps the tensor and, on the backward pass, its gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.values.append(x.detach().cpu())
        if x.requires_grad:
            x.register_hook(lambda g: self.grads.append(g.detach().cpu()))
        return x


class _LayerCapture:
    """Forward hook on a quantized layer: its input, its output, and the output's gradient."""

    def __init__(self, layer: nn.Module) -> None:
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.handle = layer.register_forward_hook(self)

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.inputs.append(args[0].detach().cpu())
        self.outputs.append(output.detach().cpu())
        if output.requires_grad:
            output.register_hook(lambda g: self.grads.append(g.detach().cpu()))


def _flat_outputs(output: Any) -> torch.Tensor:
    """The model's output per image, flattened: a classifier's logits as they are; a backbone's feature
    maps concatenated (docs/methods.md, PTQ4ViT)."""
    if isinstance(output, torch.Tensor):
        return output.flatten(1)
    values = output.values() if isinstance(output, dict) else output
    return torch.cat([_flat_outputs(value) for value in values], dim=1)


@CALIBRATORS.register("ptq4vit")
class PTQ4ViTCalibrator(Calibrator):
    """PTQ4ViT: twin-uniform post-softmax / post-GELU quantizers, Hessian-guided alternating scale search."""

    Options = PTQ4ViTOptions
    needs = frozenset({ATTENTION})  # searches the operands of the attention products
    smoke_options: ClassVar[dict] = {"candidates": 8, "rounds": 1, "softmax_splits": 8}

    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> dict[str, Any]:
        options = self.options
        layers = [layer for _, layer in weight_quantized_layers(qmodel)]
        first = next((layer for layer in layers if isinstance(layer, QuantConv2d)), None)
        if first is not None and not options.quantize_image and get_point(first, "in") is not None:
            remove_point(first, "in")
        attentions = [m for m in qmodel.modules() if is_instrumented_attention(m)]
        known = {id(get_point(layer, "in")) for layer in layers}
        known |= {id(get_point(m, p)) for m in attentions for p in ("q", "k", "attn", "v")}
        stray = [name for name, quantizer in act_quantizers(qmodel) if id(quantizer) not in known]
        if stray:
            raise HarnessError(f"calibrator ptq4vit calibrates the standard placement; {stray[0]} is outside it")
        was_training = qmodel.training
        qmodel.eval()
        try:
            captures, products, post_gelu = self._capture(qmodel, layers, attentions, context)
        finally:
            qmodel.train(was_training)
        qkv = {id(m.qkv) for m in attentions if isinstance(getattr(m, "qkv", None), nn.Linear)}
        twin = {"twin_uniform": 0, "twin_signed": 0}
        with torch.no_grad():
            for layer in layers:
                capture = captures[id(layer)]
                gelu = options.twin_gelu and id(layer) in post_gelu and get_point(layer, "in") is not None
                twin["twin_signed"] += gelu
                self._search_layer(layer, capture, 3 if id(layer) in qkv else 1, gelu, context.device)
            for attention in attentions:
                if get_point(attention, "q") is None or not products[id(attention)][0].values:
                    continue
                scores, attn_v = products[id(attention)]
                quantizers = [get_point(attention, p) for p in ("q", "k", "attn", "v")]
                values = [q.observer.tensors for q in quantizers]
                self._search_product(quantizers[0], quantizers[1], values[0], values[1], scores, False,
                                     context.device, transpose=True)
                self._search_product(quantizers[2], quantizers[3], values[2], values[3], attn_v,
                                     options.twin_softmax, context.device, transpose=False)
                twin["twin_uniform"] += options.twin_softmax
        unreached = [name for name, quantizer in act_quantizers(qmodel) if not quantizer.frozen]
        if unreached:
            raise HarnessError(f"activation quantizer {unreached[0]}: the calibration pass did not reach it")
        return {"metric": options.metric, "twin_uniform_quantizers": twin["twin_uniform"],
                "twin_signed_quantizers": twin["twin_signed"]}

    # -- step 1: FP tensors and gradients -------------------------------------------------------------

    def _capture(self, qmodel: nn.Module, layers: list[nn.Module], attentions: list[nn.Module],
                 context: CalibrationContext) -> tuple[dict, dict, set[int]]:
        options = self.options
        quantizers = [q for _, q in act_quantizers(qmodel)]
        for quantizer in quantizers:
            quantizer.mode, quantizer.observer = "bypass", None
        images = context.calibration.images.to(context.device)
        with unquantized_weights(layers), torch.no_grad():
            target = F.softmax(_flat_outputs(qmodel(images)), dim=-1)  # the whole set at once, as the authors
        captures = {id(layer): _LayerCapture(layer) for layer in layers}
        products = {}
        for attention in attentions:
            products[id(attention)] = (_Capture(), _Capture())
            attach_point(attention, "scores", products[id(attention)][0])
            attach_point(attention, "attn_v", products[id(attention)][1])
        gelu_outputs: list[tuple[int, tuple]] = []
        gelu_hooks = [m.register_forward_hook(lambda m, a, out: gelu_outputs.append((out.data_ptr(), out.shape)))
                      for m in qmodel.modules() if isinstance(m, nn.GELU)]
        post_gelu: set[int] = set()
        input_hooks = [layer.register_forward_pre_hook(
            lambda m, args: post_gelu.add(id(m)) if (args[0].data_ptr(), args[0].shape) in gelu_outputs else None)
            for layer in layers]
        for quantizer in quantizers:
            quantizer.mode, quantizer.observer = "observe", _Recorder()
        parameters = [p for p in qmodel.parameters()]
        requires_grad = [p.requires_grad for p in parameters]
        try:
            with unquantized_weights(layers), torch.enable_grad():
                for p in parameters:
                    p.requires_grad_(False)
                for start in range(0, len(images), options.gradient_batch_size):
                    batch = images[start:start + options.gradient_batch_size].clone().requires_grad_(True)
                    gelu_outputs.clear()
                    output = _flat_outputs(qmodel(batch))
                    loss = F.kl_div(F.log_softmax(output, dim=-1), target[start:start + len(batch)],
                                    reduction="batchmean")
                    loss.backward()
        finally:
            for p, flag in zip(parameters, requires_grad):
                p.requires_grad_(flag)
            for handle in [*gelu_hooks, *input_hooks, *(c.handle for c in captures.values())]:
                handle.remove()
            for attention in attentions:
                remove_point(attention, "scores")
                remove_point(attention, "attn_v")
        return captures, products, post_gelu

    # -- step 2: searches ---------------------------------------------------------------------------

    def _similarity(self, raw: torch.Tensor, quantized: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return output_similarity(raw, quantized, self.options.metric, grad)

    def _search_layer(self, layer: nn.Module, capture: _LayerCapture, blocks: int, post_gelu: bool,
                      device: torch.device) -> None:
        """Weight scale (per block of output rows, per channel for the conv) and input scale of one layer:
        ``rounds`` alternating searches on its FP tensors (:class:`_LayerSearch`), the winners then set."""
        quantizer: ActQuantizer | None = get_point(layer, "in")
        if (not layer.weight_bits and quantizer is None) or not capture.inputs:
            return  # a layer the calibration pass does not reach keeps its quantizer unfrozen (refused below)
        memory_gib = self.options.conv_search_memory_gib if isinstance(layer, QuantConv2d) \
            else self.options.search_memory_gib
        search = _LayerSearch(layer, quantizer, capture, blocks, post_gelu, device, self.options, memory_gib,
                              self._similarity, self._elementwise)
        search.alternate()
        search.set_winners()

    def _elementwise(self, raw: torch.Tensor, out: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        """The patch embedding's per-position similarity (cosine: per output channel, over positions)."""
        metric = self.options.metric
        if metric == "cosine":
            return F.cosine_similarity(raw.flatten(-2), out.flatten(-2), dim=-1)[..., None, None]
        difference = raw - out
        return -(grad * difference) ** 2 if metric == "hessian" else -difference ** 2

    def _search_product(self, quant_a: ActQuantizer, quant_b: ActQuantizer, a_values: list[torch.Tensor],
                        b_values: list[torch.Tensor], capture: _Capture, twin: bool, device: torch.device,
                        transpose: bool) -> None:
        """Scales of both operands of an attention product A·B (B = kᵀ for q·kᵀ), per head; with ``twin``
        A (the post-softmax map) takes the twin-uniform quantizer and one split for all heads."""
        options = self.options
        a, b = torch.cat(a_values).to(device), torch.cat(b_values).to(device)
        if transpose:
            b = b.transpose(-2, -1)
        raw = torch.cat(capture.values).to(device)
        grad = torch.cat(capture.grads).to(device) if capture.grads else torch.zeros_like(raw)
        a_bits, b_bits = quant_a.bits, quant_b.bits
        chunk = _candidates_per_chunk(options.search_memory_gib, a.numel() + b.numel() + 2 * raw.numel())

        def per_head(x: torch.Tensor, bits: int) -> torch.Tensor:
            return x.abs().amax(dim=(0, 2, 3)) / (2 ** (bits - 1) - 0.5)

        def heads(scales: torch.Tensor) -> torch.Tensor:  # (candidates, heads) -> broadcast over (c, B, H, r, c)
            return scales.reshape(scales.shape[0], 1, -1, 1, 1)

        def head_scores(fixed: torch.Tensor, moving: torch.Tensor, candidates: torch.Tensor, bits: int,
                        left: bool) -> torch.Tensor:
            scores = []
            for begin in range(0, candidates.shape[0], chunk):
                scales = heads(candidates[begin:begin + chunk])
                moved = fake_quant_symmetric_signed(moving.unsqueeze(0), scales, bits)
                out = moved @ fixed.unsqueeze(0) if left else fixed.unsqueeze(0) @ moved
                similarity = self._similarity(raw.unsqueeze(0), out, grad)  # (candidates, images, heads, rows)
                scores.append(similarity.mean(dim=3).sum(dim=1))
            return torch.cat(scores)

        b_scale = per_head(b, b_bits)
        b_candidates = fraction_candidates(options.alpha, options.beta, options.candidates, b_scale)[:, None] \
            * b_scale[None, :]
        if twin:
            splits = torch.tensor([2.0 ** -i for i in range(options.softmax_splits)], dtype=a.dtype, device=device)
            split = splits[0]
        else:
            a_scale = per_head(a, a_bits)
            a_candidates = fraction_candidates(options.alpha, options.beta, options.candidates, a_scale)[:, None] \
                * a_scale[None, :]
        for _ in range(options.rounds):
            if twin:  # the authors search the split against the FP operand B, one split for all heads
                scores = []
                for value in splits:
                    out = fake_quant_twin_uniform(a, value, a_bits) @ b
                    scores.append(self._similarity(raw, out, grad).mean(dim=[1, 2]).sum(dim=0))
                split = splits[best_candidate(torch.stack(scores))]
                a_sim = fake_quant_twin_uniform(a, split, a_bits)
            else:
                b_sim = fake_quant_symmetric_signed(b, heads(b_scale[None])[0], b_bits)
                best = best_candidate(head_scores(b_sim, a, a_candidates, a_bits, left=True))
                a_scale = a_candidates.gather(0, best.reshape(1, -1)).reshape(-1)
                a_sim = fake_quant_symmetric_signed(a, heads(a_scale[None])[0], a_bits)
            best = best_candidate(head_scores(a_sim, b, b_candidates, b_bits, left=False))
            b_scale = b_candidates.gather(0, best.reshape(1, -1)).reshape(-1)
        if twin:
            quant_a.kind = "twin_uniform"
            quant_a.set_params(split, torch.zeros_like(split))
        else:
            quant_a.kind = "uniform"
            quant_a.set_params(a_scale.reshape(-1, 1, 1), torch.tensor(2.0 ** (a_bits - 1), dtype=a_scale.dtype))
        quant_b.kind = "uniform"
        quant_b.set_params(b_scale.reshape(-1, 1, 1), torch.tensor(2.0 ** (b_bits - 1), dtype=b_scale.dtype))


def _candidates_per_chunk(memory_gib: float, elements_per_candidate: int) -> int:
    """How many candidates one wide product scores: the authors' code fills a budget of float32 elements
    (docs/methods.md, PTQ4ViT: ``search_memory_gib``), so the products have their shapes."""
    return max(1, int((memory_gib * 1024 ** 3 / 4) // elements_per_candidate))


class _LayerSearch:
    """Step 2 for one Linear layer or the patch embedding: its FP tensors, the candidate scales of its
    weight (per block of output rows; per output channel for the conv) and of its input, and the current
    winner of each. Candidates are scored in chunks, one wide product per chunk."""

    def __init__(self, layer: nn.Module, quantizer: ActQuantizer | None, capture: _LayerCapture, blocks: int,
                 post_gelu: bool, device: torch.device, options: PTQ4ViTOptions, memory_gib: float,
                 similarity: Callable[..., torch.Tensor], elementwise: Callable[..., torch.Tensor]) -> None:
        self.layer, self.quantizer, self.post_gelu, self.options = layer, quantizer, post_gelu, options
        self.similarity, self.elementwise = similarity, elementwise
        self.w_bits = layer.weight_bits
        self.a_bits = quantizer.bits if quantizer is not None else None
        self.w_qmax = 2 ** (self.w_bits - 1) if self.w_bits else 0
        self.a_qmax = 2 ** (self.a_bits - 1) if self.a_bits else 0
        self.negative = GELU_MINIMUM / self.a_qmax if post_gelu else 0.0
        self.weight = layer.weight.detach()
        self.bias = layer.bias.detach() if layer.bias is not None else None
        self.conv = isinstance(layer, QuantConv2d)
        self.blocks = self.weight.shape[0] if self.conv else blocks
        self.rows = self.weight.shape[0] // self.blocks
        self._fp_tensors(capture, device)
        self.chunk = _candidates_per_chunk(memory_gib, 2 * (self.x.numel() + self.raw.numel()))
        self._initial_candidates()

    def _fp_tensors(self, capture: _LayerCapture, device: torch.device) -> None:
        """The layer's FP input, output and output gradient, the last two also split into blocks of rows."""
        self.x = torch.cat(capture.inputs).to(device)
        self.raw = torch.cat(capture.outputs).to(device)
        # an output the loss does not depend on has gradient 0 (no backward hook fires for it)
        self.grad = torch.cat(capture.grads).to(device) if capture.grads else torch.zeros_like(self.raw)
        if self.conv:
            self.raw_rows, self.grad_rows = self.raw.unsqueeze(1), self.grad.unsqueeze(1)
        else:
            shape = (*self.raw.shape[:-1], 1, self.blocks, self.rows)
            self.raw_rows, self.grad_rows = self.raw.reshape(shape), self.grad.reshape(shape)

    def _initial_candidates(self) -> None:
        """Max-based initial scales and the candidate fractions of them (docs/methods.md, PTQ4ViT, step 2)."""
        options = self.options
        self.w_scale = self.a_scale = None
        if self.w_bits:
            self.w_scale = self.weight.reshape(self.blocks, -1).abs().amax(dim=1) / (self.w_qmax - 0.5)
            self.w_candidates = fraction_candidates(options.alpha, options.beta, options.candidates,
                                                    self.w_scale)[:, None] * self.w_scale[None, :]
        if self.quantizer is not None:
            x = self.x
            self.a_scale = (x.amax() if self.post_gelu else x.abs().amax()) / (self.a_qmax - 0.5)
            self.a_candidates = fraction_candidates(options.alpha, options.beta, options.candidates,
                                                    self.a_scale) * self.a_scale

    def alternate(self) -> None:
        """``rounds`` rounds of: the weight scale with the input at its current scale, then the input scale
        with the weight at its current scale. With an FP input every weight round is the same: one is run."""
        for round_ in range(self.options.rounds):
            if self.w_bits and (round_ == 0 or self.quantizer is not None):
                x_sim = self.quant_input(self.x, self.a_scale) if self.quantizer is not None else self.x
                best = best_candidate(self.weight_scores(x_sim))
                self.w_scale = self.w_candidates.gather(0, best.reshape(1, -1)).reshape(-1)
            if self.quantizer is not None:
                w_sim = self.quant_weight(self.w_scale[None]) if self.w_bits else self.weight
                self.a_scale = self.a_candidates[best_candidate(self.input_scores(w_sim))]

    def set_winners(self) -> None:
        """The winning scales into the layer's weight quantizer and its input quantizer."""
        if self.w_bits:
            channel_scale = self.w_scale.repeat_interleave(self.rows)
            self.layer.set_weight_params(channel_scale, torch.full_like(channel_scale, self.w_qmax))
        quantizer, a_scale = self.quantizer, self.a_scale
        if quantizer is not None:
            if self.post_gelu:
                quantizer.kind = "twin_signed"
                quantizer.set_params(a_scale, torch.tensor(self.negative, dtype=a_scale.dtype))
            else:
                quantizer.kind = "uniform"
                quantizer.set_params(a_scale, torch.tensor(float(self.a_qmax), dtype=a_scale.dtype))

    def quant_weight(self, scales: torch.Tensor) -> torch.Tensor:
        """(candidates, blocks) scales -> the weights quantized with each, stacked along output rows."""
        weight = self.weight
        if not self.w_bits:
            return weight
        view = (scales.shape[0], self.blocks, *([1] * weight.dim()))
        blocked = weight.reshape(1, self.blocks, self.rows, *weight.shape[1:])
        return fake_quant_symmetric_signed(blocked, scales.reshape(view), self.w_bits).reshape(-1, *weight.shape[1:])

    def quant_input(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if self.post_gelu:
            return fake_quant_twin_signed(values, scale, self.negative, self.a_bits)
        return fake_quant_symmetric_signed(values, scale, self.a_bits)

    def weight_scores(self, x_sim: torch.Tensor) -> torch.Tensor:
        """Score of every weight candidate (candidates, blocks), summed over images, with input ``x_sim``."""
        return torch.cat([self._weight_chunk_scores(x_sim, self.w_candidates[begin:begin + self.chunk])
                          for begin in range(0, self.options.candidates, self.chunk)])

    def _weight_chunk_scores(self, x_sim: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        count, bias = scales.shape[0], self.bias
        w_sim = self.quant_weight(scales)
        b_sim = bias.repeat(count) if bias is not None else None
        if self.conv:
            out = self.layer._conv_forward(x_sim, w_sim, b_sim)
            out = out.reshape(out.shape[0], count, -1, *out.shape[2:])  # images, candidates, oc, h, w
            similarity = self.elementwise(self.raw_rows, out, self.grad_rows).mean(dim=[3, 4])
        else:
            out = F.linear(x_sim, w_sim, b_sim).reshape(*self.raw.shape[:-1], count, self.blocks, self.rows)
            similarity = self.similarity(self.raw_rows, out, self.grad_rows)  # (images, *, candidates, blocks)
            if similarity.dim() > 3:
                similarity = similarity.mean(dim=list(range(1, similarity.dim() - 2)))
        return similarity.sum(dim=0)

    def input_scores(self, w_sim: torch.Tensor) -> torch.Tensor:
        """Score of every input candidate, summed over images, with weight ``w_sim``."""
        return torch.cat([self._input_chunk_scores(w_sim, self.a_candidates[begin:begin + self.chunk])
                          for begin in range(0, self.options.candidates, self.chunk)])

    def _input_chunk_scores(self, w_sim: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        count, x, raw, grad = scales.shape[0], self.x, self.raw, self.grad
        if self.conv:
            x_sim = self.quant_input(x.unsqueeze(0), scales.reshape(-1, 1, 1, 1, 1)).reshape(-1, *x.shape[1:])
            out = self.layer._conv_forward(x_sim, w_sim, self.bias)
            out = out.reshape(count, *raw.shape).transpose(0, 1)
            return self.elementwise(self.raw_rows, out, self.grad_rows).mean(dim=[2, 3, 4]).sum(dim=0)
        x_sim = self.quant_input(x.unsqueeze(-1), scales)  # (*, in, candidates)
        x_sim = x_sim.movedim(-1, -2)  # (*, candidates, in)
        out = F.linear(x_sim, w_sim, self.bias)
        similarity = self.similarity(raw.unsqueeze(-2), out, grad.unsqueeze(-2))  # (images, *, candidates)
        if similarity.dim() > 2:
            similarity = similarity.mean(dim=list(range(1, similarity.dim() - 1)))
        return similarity.sum(dim=0)
