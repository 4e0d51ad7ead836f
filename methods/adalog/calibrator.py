"""Calibrator ``adalog``: AdaLog's quantizers and their Fast Progressive Combining Search (docs/methods.md, AdaLog).

Layers are calibrated one at a time in module order (the patch embedding, then per block qkv, proj, q·kᵀ,
attn·v, fc1, fc2, then the head; Swin's patch mergings where they stand), each on its floating-point input and
output: the authors' code keeps every layer in floating point until the whole model is calibrated. A Linear fed
by a LayerNorm first gets per-channel input parameters, folded into the norm (the zero point's mean rounded);
its input, rescaled the same way, is then searched per tensor as every other Linear's input. fc2's input (post-
GELU) gets the shifted AdaLog quantizer, whose shift is folded into fc2's bias at the end; the post-softmax map
gets AdaLog with scale 1; q, k and v are uniform per head. The image stays in floating point (the authors' 8
bits mean unquantized).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from harness.api import CALIBRATORS, BitSpec, CalibrationContext, Calibrator, HarnessError, Range, ranged
from harness.api.quantizer import (LAYER_INPUT, LAYER_OUTPUT, Target, act_quantizers, capture, floating_point,
                                   fold_channel_params, get_point, is_instrumented_attention, norm_linear_pairs,
                                   remove_point, set_adalog_params, weight_quantized_layers)
from methods.adalog.layers import ConvSearch, LinearSearch, MatMulSearch, Search


@dataclass
class AdaLogOptions:
    """Defaults of the authors' configs/4bit.py (docs/methods.md, AdaLog)."""

    eq_n: int = ranged(Range(low=32, high=4096), 128)  # candidates per search step
    search_rounds: int = ranged(Range(low=1, high=20), 3)  # alternating weight / input rounds
    steps: int = ranged(Range(low=1, high=20), 6)  # FPCS steps (the first on the percentile grid)
    calib_batch_size: int = ranged(Range(low=1, high=4096), 32)  # images per scoring batch
    matmul_head_channel_wise: bool = True  # q, k, v quantized per head
    device_memory_gib: float = ranged(Range(low=0.25, high=1024), 8.0)  # the authors' GPU memory rule for chunking
    # how quantiles are computed: as torch <= 2.13 did (the published figures' code path), or as torch 2.14
    quantile: Literal["published", "torch2.14"] = "published"

    def __post_init__(self) -> None:
        if self.eq_n < 32 or self.eq_n % 32:
            raise ValueError("eq_n must be a multiple of 32 (the progressive search keeps 16 or 32 candidates)")
        if self.steps < 1 or self.search_rounds < 1 or self.calib_batch_size < 1:
            raise ValueError("steps, search_rounds and calib_batch_size must be at least 1")
        if self.quantile not in ("published", "torch2.14"):
            raise ValueError("quantile must be published or torch2.14")


def calibration_units(qmodel: nn.Module) -> list[tuple[str, nn.Module]]:
    """(kind, module) in the authors' order: weight-quantized layers in module order, an attention's two products
    after its Linears ("qk", "av")."""
    quantized = {id(layer) for _, layer in weight_quantized_layers(qmodel)}
    units: list[tuple[str, nn.Module]] = []
    pending: list[tuple[str, nn.Module]] = []
    for name, module in qmodel.named_modules():
        while pending and not name.startswith(pending[-1][0] + "."):
            units += [("qk", pending[-1][1]), ("av", pending.pop()[1])]
        if id(module) in quantized:
            units.append(("layer", module))
        elif is_instrumented_attention(module):
            pending.append((name, module))
    while pending:
        units += [("qk", pending[-1][1]), ("av", pending.pop()[1])]
    return units


def post_gelu_layers(qmodel: nn.Module) -> set[int]:
    """The second Linear of every MLP whose activation is GELU (its input is post-GELU)."""
    return {id(module.fc2) for module in qmodel.modules()
            if isinstance(getattr(module, "act", None), nn.GELU) and isinstance(getattr(module, "fc2", None), nn.Linear)}


@CALIBRATORS.register("adalog")
class AdaLogCalibrator(Calibrator):
    """AdaLog: FPCS-searched uniform quantizers, AdaLog post-softmax and post-GELU, folded post-LayerNorm ranges."""

    Options = AdaLogOptions
    version = "1"
    smoke_options: ClassVar[dict[str, Any]] = {"eq_n": 32, "search_rounds": 1, "steps": 2}  # the conformance kit's

    def unmet_bits(self, bits: BitSpec) -> str | None:
        """The patch embedding's weight search spreads eq_n candidates over all 2^(b-1) zero points (docs/methods.md,
        AdaLog): fewer than one scale each leaves it nothing to search."""
        zero_points = 2 ** (bits.weight_bits - 1)
        if bits.weight_bits and self.options.eq_n < zero_points:
            return (f"eq_n {self.options.eq_n} gives the patch embedding's {bits.weight_bits}-bit weight search no "
                    f"candidate scale for each of its {zero_points} zero points; use eq_n >= {zero_points}")
        return None

    @torch.no_grad()
    def calibrate(self, qmodel: nn.Module, context: CalibrationContext) -> dict[str, Any]:
        options = self.options
        search = Search(eq_n=options.eq_n, rounds=options.search_rounds, steps=options.steps,
                        batch_size=options.calib_batch_size, memory=int(options.device_memory_gib * 2 ** 30),
                        quantile=options.quantile)
        act_bits = context.bits.act_bits
        images = context.calibration.images.to(context.device)
        for module in qmodel.modules():
            if is_instrumented_attention(module) and hasattr(module, "scale_after_product"):
                module.scale_after_product = True  # q quantized before 1/sqrt(d), as the authors' ViT code
        norms = {id(linear): norm for norm, linear in norm_linear_pairs(qmodel)}
        gelu = post_gelu_layers(qmodel)
        was_training = qmodel.training
        qmodel.eval()
        shifts: list[tuple[nn.Linear, float]] = []
        folded = 0

        def grab(targets: dict[str, Target]) -> dict[str, torch.Tensor]:
            with floating_point(qmodel):
                return capture(qmodel, images, targets, context.device, options.calib_batch_size)

        for kind, module in calibration_units(qmodel):
            if kind == "layer":
                seen = grab({"x": Target(module, LAYER_INPUT), "out": Target(module, LAYER_OUTPUT)})
                if isinstance(module, nn.Conv2d):
                    if module.weight_bits:
                        module.set_weight_params(*ConvSearch(module, seen["x"], seen["out"], module.weight_bits,
                                                             search).calibrate())
                    if get_point(module, "in") is not None:
                        remove_point(module, "in")  # 8-bit image input: left unquantized, as the authors' code
                    continue
                quantizer = get_point(module, "in")
                layer_search = LinearSearch(module.weight, module.bias, seen["x"], seen["out"],
                                            module.weight_bits or 32, act_bits, search)
                if id(module) in gelu:
                    layer_search.calibrate_post_gelu()
                    shifts.append((module, layer_search.shift.item()))
                else:
                    norm = norms.get(id(module))
                    if norm is not None and act_bits == module.weight_bits:
                        folded += self._fold(layer_search, norm, module)
                    layer_search.calibrate_uniform()
                if module.weight_bits:
                    module.set_weight_params(layer_search.w_scale.reshape(-1), layer_search.w_zero_point.reshape(-1))
                if quantizer is None:
                    continue
                if layer_search.log_base is not None:
                    set_adalog_params(quantizer, layer_search.a_scale, layer_search.log_base, layer_search.shift.item())
                else:
                    quantizer.set_params(layer_search.a_scale, layer_search.a_zero_point)
            else:
                names = ("q", "k") if kind == "qk" else ("attn", "v")
                seen = grab({name: Target(module, name) for name in names})
                a, b = seen[names[0]], seen[names[1]]
                if kind == "qk":
                    b = b.transpose(-2, -1)
                matmul = MatMulSearch(a, b, a @ b, act_bits, act_bits if kind == "av" else None,
                                      options.matmul_head_channel_wise, search)
                matmul.calibrate()
                points = [get_point(module, name) for name in names]
                if kind == "qk":
                    points[0].set_params(*matmul.params["A"])
                else:
                    set_adalog_params(points[0], torch.ones((), dtype=a.dtype), matmul.log_base)
                points[1].set_params(*matmul.params["B"])
        for layer, shift in shifts:
            _fold_shift(layer, shift)
        qmodel.train(was_training)
        unreached = [name for name, quantizer in act_quantizers(qmodel) if not quantizer.frozen]
        if unreached:
            raise HarnessError(f"activation quantizer {unreached[0]}: calibrator adalog does not calibrate that point")
        return {"reparameterized_norms": folded, "post_gelu_shifts": len(shifts)}

    @staticmethod
    def _fold(layer_search: LinearSearch, norm: nn.LayerNorm, linear: nn.Linear) -> int:
        """Per-channel input parameters, folded into ``norm`` and ``linear``; the captured input rescaled alike."""
        layer_search.activation_fpcs(on_output=False, channel_wise=True)
        scale, zero_point = layer_search.a_scale, layer_search.a_zero_point
        target_scale = torch.mean(scale)
        ratio = scale / target_scale
        shift = -zero_point * scale / ratio - (-torch.mean(zero_point).round() * target_scale)
        fold_channel_params(norm, linear, scale, zero_point, round_zero_point=True)
        # a Linear without a bias (Swin's patch-merging reduction) gets one from the fold: score with it
        layer_search.bias = linear.bias
        layer_search.x = layer_search.x / ratio - shift
        return 1


@torch.no_grad()
def _fold_shift(layer: nn.Linear, shift: float) -> None:
    """The post-GELU quantizer's output is not shifted back: the Linear's bias takes W_q · (-shift), computed with its
    quantized weight as the authors' bias reparameterization does."""
    ones = torch.full((1, layer.in_features), -shift, dtype=layer.weight.dtype, device=layer.weight.device)
    correction = (ones @ layer.quantized_weight().transpose(0, 1)).squeeze()
    if layer.bias is None:
        layer.bias = nn.Parameter(correction)
    else:
        layer.bias.copy_(layer.bias + correction)
