"""Export a calibrated quantized model to ONNX with QuantizeLinear / DequantizeLinear pairs (docs/deploy.md).

Each per-tensor uniform activation quantizer of the `standard` placement at 8 bits becomes a
QuantizeLinear → DequantizeLinear pair with the calibrated (or searched, integer) scale and zero
point; each quantized weight is stored as integers (holding values of its own bit width) with a
per-output-channel DequantizeLinear, the scales exactly those the fake quantizer uses. ONNX Runtime
then fuses the pairs into integer kernels. What has no integer form is refused with its reasons
(:func:`deployability`), never approximated; which quantizers of each calibrator lower is a table
(docs/deploy.md, What lowers). The weights' integer type decides whether every CPU computes the same
integers (:data:`WEIGHT_TYPES`, docs/deploy.md, Same integers on every CPU).
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.model.arch import is_instrumented_attention
from harness.model.instrument import POINTS
from harness.plugin.task import Task
from harness.quant.fake_quant import fake_quant_asymmetric, fake_quant_offset_after_round
from harness.quant.modules import ActQuantizer, QuantConv2d, QuantLinear, weight_quantized_layers
from harness.store.io import atomic_save
from harness.store.machine import cpu_description

OPSET = 18
ACT_BITS = 8  # the only activation width with integer kernels in ONNX Runtime (docs/deploy.md, What lowers)
MAX_WEIGHT_BITS = 8  # weights are stored in 8-bit containers
EXECUTION_PROVIDER = "CPUExecutionProvider"
ATTENTION_POINTS = ("q", "k", "v", "attn")
# How a quantized weight is stored (docs/deploy.md, Same integers on every CPU). ONNX Runtime's u8 x s8
# kernel on x86 CPUs without VNNI (vpmaddubsw) sums two products in a saturating int16: exact while
# 2 * 255 * 2^(b-1) <= 32767, i.e. for weights of at most 7 bits. "s8": int8 weights, the fastest kernel,
# whose 8-bit results then depend on the CPU; "u8": weights shifted by 128 into uint8 (zero point 128),
# u8 x u8 products widened to int16 before any sum, exact on every CPU; "auto": s8 up to 7 bits, u8 at 8.
WEIGHT_TYPES = ("auto", "s8", "u8")
WeightType = Literal["auto", "s8", "u8"]
SATURATION_FREE_WEIGHT_BITS = 7
U8_WEIGHT_ZERO_POINT = 128


def stored_weight_type(weight_bits: int, requested: WeightType = "auto") -> str:
    """The integer type a ``weight_bits`` weight is stored in for ``requested`` (see :data:`WEIGHT_TYPES`)."""
    if requested not in WEIGHT_TYPES:
        raise HarnessError(f"weight type accepts {', '.join(WEIGHT_TYPES)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "s8" if weight_bits <= SATURATION_FREE_WEIGHT_BITS else "u8"


@dataclass(frozen=True)
class Deployability:
    """Whether a calibrated model lowers to Q/DQ, and if not, every reason (docs/deploy.md, What lowers)."""

    reasons: tuple[str, ...]

    @property
    def deployable(self) -> bool:
        return not self.reasons

    def summary(self) -> str:
        return "deployable" if self.deployable else "simulated only: " + "; ".join(self.reasons)


def deployability(model: nn.Module) -> Deployability:
    """Check every quantizer of ``model`` against what has an exact integer form in ONNX Runtime.

    Reasons are grouped: one line per kind of obstacle, with a count and an example point.
    """
    found: dict[str, list[str]] = defaultdict(list)
    for where, reason in simulated_quantizers(model).items():
        found[reason].append(where)
    return Deployability(tuple(f"{reason} ({len(where)} quantizer(s), e.g. {where[0]})" for reason, where in found.items()))


def simulated_quantizers(model: nn.Module) -> dict[str, str]:
    """Every quantizer of ``model`` without an exact Q/DQ form, by where it is (``blocks.0.mlp.fc2.in``, a
    weight by its layer's name), with the reason; the others lower (docs/deploy.md, What lowers)."""
    sites = _activation_sites(model)
    found: dict[str, str] = {}
    for module_name, module in model.named_modules():
        points = module._modules.get(POINTS)
        for point, quantizer in (points._modules.items() if points is not None else ()):
            site = "post-softmax" if point == "attn" else sites.get(id(module), f"{point}-point")
            reason = _point_obstacle(module, point, quantizer, site)
            if reason:
                found[f"{module_name or 'model'}.{point}"] = reason
    for name, layer in weight_quantized_layers(model):
        if layer.weight_bits and layer.weight_bits > MAX_WEIGHT_BITS:
            found[name] = f"{layer.weight_bits}-bit weights do not fit the int8 storage of a DequantizeLinear weight"
        elif layer.weight_bits and layer.weight_zero_point is not None:
            found[name] = ("asymmetric weights (a zero point per output channel, from a calibrator's search): "
                           "the exporter writes symmetric weights only")
    return found


def _activation_sites(model: nn.Module) -> dict[int, str]:
    """The layers whose input is an MLP's activation output (timm's ``act`` then ``fc2``), named by that
    activation: ``post-GELU``, or ``post-ReLU`` where a calibrator replaced it."""
    return {id(module.fc2): f"post-{type(module.act).__name__}" for module in model.modules()
            if isinstance(getattr(module, "act", None), nn.Module)
            and isinstance(getattr(module, "fc2", None), nn.Module)}


def _point_obstacle(module: nn.Module, point: str, quantizer: nn.Module, site: str) -> str | None:
    """Why the quantizer at ``point`` of ``module`` (``site``: post-softmax, post-GELU, ...) has no exact Q/DQ form,
    or None (docs/deploy.md, What lowers)."""
    if not isinstance(quantizer, ActQuantizer):
        return f"{type(quantizer).__name__} at a quantizer point is not a quantizer the exporter knows"
    if not quantizer.frozen:
        return "activation quantizer not calibrated (its range is not frozen)"
    standard = (point == "in" and isinstance(module, (QuantLinear, QuantConv2d))) or \
        (point in ATTENTION_POINTS and is_instrumented_attention(module))
    if not standard:
        return ("quantizer outside the standard placement (residual stream, norm or layer output, embeddings): "
                "no integer kernel consumes it")
    if quantizer.kind != "uniform":
        levels = "two-range" if quantizer.kind.startswith("twin") else "logarithmic"
        return f"{quantizer.kind} {site} quantizer: ONNX has no operator for {levels} levels"
    if quantizer.scale.numel() > 1 or quantizer.zero_point.numel() > 1:
        granularity = _granularity(point, quantizer.scale if quantizer.scale.numel() > 1 else quantizer.zero_point)
        return (f"{granularity} activation scales: ONNX Runtime's integer MatMul takes one scale and zero point "
                "per activation tensor")
    if quantizer.offset_after_round and not _integer_zero_point(quantizer):
        return ("fractional zero point (e.g. a per-channel range folded into one tensor): QuantizeLinear takes an "
                "integer zero point")
    if quantizer.bits != ACT_BITS:
        return f"{quantizer.bits}-bit activations: ONNX Runtime has integer kernels for 8-bit activations only"
    return None


def _granularity(point: str, parameter: torch.Tensor) -> str:
    """``per-head``, ``per-token``, ``per-head-and-token``, ...: the axes along which a searched activation
    parameter varies, aligned from the right on (heads, tokens, channels) for an attention operand and (tokens,
    channels) for a layer's input."""
    axes = ("head", "token", "channel") if point in ATTENTION_POINTS else ("token", "channel")
    shape = tuple(parameter.shape)[-len(axes):]
    varying = [axis for axis, size in zip(axes[len(axes) - len(shape):], shape) if size > 1]
    return "per-" + "-and-".join(varying) if varying else "per-tensor"


def _integer_zero_point(quantizer: ActQuantizer) -> bool:
    """A zero point QuantizeLinear can hold: an integer in [0, 2^b - 1]. With it, a searched quantizer's
    clamp(round(x / s) + z) is exactly QuantizeLinear's saturate(round(x / s) + z) (docs/quantizer.md, Searched
    quantizers)."""
    z = quantizer.zero_point
    return bool(torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 2 ** quantizer.bits - 1)


@torch.library.custom_op("dfq_deploy::quantize_dequantize", mutates_args=())
def _quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """In torch, the fake quantizer's own 8-bit arithmetic; in ONNX, a QuantizeLinear → DequantizeLinear pair."""
    return fake_quant_asymmetric(x, scale, zero_point.float(), ACT_BITS)


@_quantize_dequantize.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("dfq_deploy::quantize_dequantize_after_round", mutates_args=())
def _quantize_dequantize_after_round(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """A searched quantizer's arithmetic, zero point added after rounding, in torch; in ONNX the same
    QuantizeLinear → DequantizeLinear pair, whose arithmetic this is."""
    return fake_quant_offset_after_round(x, scale, zero_point.float(), ACT_BITS)


@_quantize_dequantize_after_round.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("dfq_deploy::dequantize_weight", mutates_args=())
def _dequantize_weight(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    """Integer weight less its zero point, times its per-channel scale; in ONNX, a DequantizeLinear on an
    int8 or uint8 initializer."""
    shape = [1] * q.dim()
    shape[axis] = -1
    return (q.float() - zero_point.float().view(shape)) * scale.view(shape)


@_dequantize_weight.register_fake
def _(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.empty(q.shape, dtype=torch.float32, device=q.device)


def _translations() -> dict:
    from onnxscript import opset18 as op

    def quantize_dequantize(x, scale, zero_point):
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero_point), scale, zero_point)

    def dequantize_weight(q, scale, zero_point, axis: int):
        return op.DequantizeLinear(q, scale, zero_point, axis=axis)

    return {torch.ops.dfq_deploy.quantize_dequantize.default: quantize_dequantize,
            torch.ops.dfq_deploy.quantize_dequantize_after_round.default: quantize_dequantize,
            torch.ops.dfq_deploy.dequantize_weight.default: dequantize_weight}


class _QuantizeDequantize(nn.Module):
    """A frozen 8-bit activation quantizer: calibrated or searched scale (float32) and zero point (uint8); in
    torch, the arithmetic of the quantizer it replaces (zero point added before or after rounding)."""

    def __init__(self, quantizer: ActQuantizer) -> None:
        super().__init__()
        self.register_buffer("scale", quantizer.scale.detach().float().clone())
        self.register_buffer("zero_point", quantizer.zero_point.detach().round().to(torch.uint8))
        self.after_round = quantizer.offset_after_round

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.after_round:
            return _quantize_dequantize_after_round(x, self.scale, self.zero_point)
        return _quantize_dequantize(x, self.scale, self.zero_point)


def _input_quantizer(layer: nn.Module) -> nn.Module:
    """The layer's ``in`` point as a module it calls itself; the exporter's traced code cannot spell ``in``,
    a Python keyword, as an attribute. In the standard placement ``in`` is the layer's only point."""
    points = layer._modules.get(POINTS)
    quantizer = points._modules.get("in") if points is not None else None
    return _QuantizeDequantize(quantizer) if quantizer is not None else nn.Identity()


class _DeployedWeight(nn.Module):
    """A layer's weight: integers q = clamp(round(w / s_c)) exactly as the fake quantizer computes them
    (docs/quantizer.md, Arithmetic) behind a per-channel DequantizeLinear, or the FP weight of a layer
    the profile keeps in floating point. Stored as int8 with zero point 0, or as uint8 q + 128 with zero
    point 128 (``weight_type``, :data:`WEIGHT_TYPES`). ``transpose`` stores a Linear's weight as (in, out),
    so the DequantizeLinear feeds MatMul directly."""

    def __init__(self, layer: QuantLinear | QuantConv2d, transpose: bool, weight_type: WeightType) -> None:
        super().__init__()
        weight = layer.weight.detach().float()
        self.bits, self.axis = layer.weight_bits, 1 if transpose else 0
        if self.bits:
            scale = layer.weight_scale.detach().float()
            limit = 2 ** (self.bits - 1)
            weight = torch.clamp(torch.round(weight / scale), -limit, limit - 1)
            unsigned = stored_weight_type(self.bits, weight_type) == "u8"
            offset, dtype = (U8_WEIGHT_ZERO_POINT, torch.uint8) if unsigned else (0, torch.int8)
            weight = (weight + offset).to(dtype)
            self.register_buffer("scale", scale.flatten())
            self.register_buffer("zero_point", torch.full_like(self.scale, offset, dtype=dtype))
        self.register_buffer("values", weight.t().contiguous() if transpose else weight)

    def forward(self) -> torch.Tensor:
        if not self.bits:
            return self.values
        return _dequantize_weight(self.values, self.scale, self.zero_point, self.axis)


class _DeployLinear(nn.Module):
    """Input Q/DQ, then x @ DQ(qᵀ) + b."""

    def __init__(self, layer: QuantLinear, weight_type: WeightType) -> None:
        super().__init__()
        self.input_quantizer = _input_quantizer(layer)
        self.weight = _DeployedWeight(layer, transpose=True, weight_type=weight_type)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().float().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.input_quantizer(x) @ self.weight()
        return y if self.bias is None else y + self.bias


class _DeployConv2d(nn.Module):
    """The patch-embedding convolution: input Q/DQ, per-output-channel DequantizeLinear weight."""

    def __init__(self, layer: QuantConv2d, weight_type: WeightType) -> None:
        super().__init__()
        if layer.padding_mode != "zeros":
            raise HarnessError(f"convolution padding mode {layer.padding_mode!r} is not exported; only zeros")
        self.input_quantizer = _input_quantizer(layer)
        self.weight = _DeployedWeight(layer, transpose=False, weight_type=weight_type)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().float().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.input_quantizer(x), self.weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


def deploy_model(qmodel: nn.Module, weight_type: WeightType = "auto") -> nn.Module:
    """A copy of a calibrated model whose quantizers are explicit Q/DQ operations (same values in torch),
    weights stored as ``weight_type`` (:data:`WEIGHT_TYPES`).

    Raises HarnessError, naming every obstacle, when a placement has no integer form.
    """
    check = deployability(qmodel)
    if not check.deployable:
        raise HarnessError(check.summary())
    model = copy.deepcopy(qmodel).float().cpu().eval()
    for name, layer in list(model.named_modules()):
        if isinstance(layer, (QuantLinear, QuantConv2d)):
            deployed = (_DeployLinear if isinstance(layer, QuantLinear) else _DeployConv2d)(layer, weight_type)
            model.set_submodule(name, deployed)
    for name, quantizer in [(n, m) for n, m in model.named_modules() if isinstance(m, ActQuantizer)]:
        model.set_submodule(name, _QuantizeDequantize(quantizer))
    return model


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, weight_type: WeightType = "auto",
                overwrite: bool = True) -> Path:
    """Write ``model`` (calibrated quantized, or FP for a baseline) to ``path`` with a dynamic batch axis.

    A quantized model goes through :func:`deploy_model` first (weights as ``weight_type``), so an
    undeployable one is refused. The file is written atomically (``harness.store.io.atomic_save``): an
    interrupted export leaves no half file; without ``overwrite`` an existing ``path`` is never replaced
    (FileExistsError).
    """
    if _has_quantizers(model):
        deployable = deploy_model(model, weight_type)
    else:
        deployable = copy.deepcopy(model).float().cpu().eval()
    path = Path(path)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(deployable, (example.float(),), dynamo=True, opset_version=OPSET,
                                    input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), custom_translation_table=_translations(),
                                    external_data=False, verbose=False)
    atomic_save(path, lambda temporary: program.save(str(temporary)), overwrite=overwrite)
    return path


def _has_quantizers(model: nn.Module) -> bool:
    return any(isinstance(m, ActQuantizer) for m in model.modules()) or \
        any(layer.weight_bits for _, layer in weight_quantized_layers(model))


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime CPU session behind a module's call, so tasks evaluate it like the torch model.

    ``optimize=False`` runs the graph as written, Q/DQ as the reference float operators, without
    the fusions into integer kernels (to separate rounding from accumulation, docs/deploy.md).
    """

    def __init__(self, path: Path, threads: int | None = None, optimize: bool = True) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=[EXECUTION_PROVIDER])
        self.input_name = self.session.get_inputs()[0].name
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # a device for harness.data.evaluation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: images})[0])


def measure_deployment(task: Task, model_name: str, qmodel: nn.Module, fp_model: nn.Module,
                       simulated: dict[str, float], limit: int | None, repeats: int = 5) -> dict:
    """The record's ``deployment`` block (docs/deploy.md, The grid option): what decides its figures
    (runtime and version, execution provider, CPU model and vector extensions, threads, the weights'
    integer types); deployable or the reason not; the task's metrics in ONNX Runtime and their
    difference from the fake-quant ``simulated``; latency at batch 1 and 32 (2 warm-up runs, median of
    ``repeats``) and file size, each against the FP model exported the same way."""
    import onnxruntime as ort

    block: dict = {"runtime": "onnxruntime", "version": ort.__version__, "execution_provider": EXECUTION_PROVIDER,
                   "cpu": cpu_description()}
    check = deployability(qmodel)
    if check.deployable and task.quantized_part(qmodel) is not qmodel:
        check = Deployability((f"the task quantizes {task.quantization_scope()}: export covers whole classifiers only",))
    if not check.deployable:
        return {**block, "deployable": False, "reason": check.summary()}
    threads = torch.get_num_threads()
    images = torch.randn(32, *task.prior(model_name).input_size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        paths = {"quantized": export_onnx(qmodel, images[:2], Path(folder) / "quantized.onnx"),
                 "fp": export_onnx(fp_model, images[:2], Path(folder) / "fp.onnx")}
        sessions = {kind: OnnxRuntimeModel(path, threads) for kind, path in paths.items()}
        metrics = task.evaluate(sessions["quantized"], model_name, limit=limit)
        latency = {f"batch{batch}": {kind: 1e3 * median_seconds(session, images[:batch], repeats)
                                     for kind, session in sessions.items()} for batch in (1, 32)}
        sizes = {kind: path.stat().st_size for kind, path in paths.items()}
    weight_types = sorted({stored_weight_type(layer.weight_bits) for _, layer in weight_quantized_layers(qmodel)
                           if layer.weight_bits})
    return {**block, "deployable": True, "threads": threads, "weight_types": weight_types, "metrics": metrics,
            "difference": {name: metrics[name] - simulated[name] for name in metrics if name in simulated},
            "latency_ms": latency,
            "speedup": {batch: times["fp"] / times["quantized"] for batch, times in latency.items()},
            "size_mb": sizes["quantized"] / 2**20, "size_ratio": sizes["quantized"] / sizes["fp"]}


def median_seconds(model: Callable[[torch.Tensor], Any], images: torch.Tensor, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``model(images)`` over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        model(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(images)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
