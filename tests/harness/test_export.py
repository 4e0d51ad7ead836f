"""ONNX export with Q/DQ pairs (docs/deploy.md): round trip through ONNX Runtime and the "simulated only" reasons."""
import dataclasses
import json
import re

import pytest
import torch
from torch import nn

from harness.deploy.export import deploy_model, deployability
from harness.errors import HarnessError
from harness.plugin.calibrators import MinMaxCalibrator
from harness.plugin.method import CalibrationContext, CalibrationSet
from harness.plugin.registry import CALIBRATORS
from harness.quant.bits import parse_bits
from harness.quant.convert import QuantConfig, quantize_model


def _calibrated(model, bits, config=QuantConfig()):
    torch.manual_seed(1)
    qmodel = quantize_model(model, parse_bits(bits), config)
    MinMaxCalibrator().calibrate(qmodel, CalibrationContext(
        fp_model=model, calibration=CalibrationSet(torch.randn(8, 3, 32, 32)), bits=parse_bits(bits), seed=0,
        device=torch.device("cpu")))
    return qmodel


@pytest.mark.parametrize("bits, config", [("w8a8", QuantConfig()), ("w4a8", QuantConfig()),
                                          ("w4a8", QuantConfig(keep_first_last_fp=True))])
def test_deployed_model_computes_the_fake_quantized_values_in_torch(tiny_vit, bits, config):
    qmodel = _calibrated(tiny_vit, bits, config)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        difference = (deploy_model(qmodel)(images) - qmodel(images)).abs().max().item()
    assert deployability(qmodel).deployable
    assert difference < 1e-5  # x @ Wᵀ as MatMul instead of F.linear: float32 summation order only


@pytest.mark.parametrize("bits", ["w8a8", "w4a8"])
def test_onnx_runtime_round_trip_matches_fake_quant(tiny_vit, bits, tmp_path):
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
    onnx = pytest.importorskip("onnx", reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
    from harness.deploy.export import OnnxRuntimeModel, export_onnx

    qmodel = _calibrated(tiny_vit, bits)
    images = torch.randn(6, 3, 32, 32)
    path = export_onnx(qmodel, images[:2], tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    # 2 blocks x (qkv, proj, fc1, fc2 inputs + q, k, v, attn) + patch embedding + head inputs
    assert ops.count("QuantizeLinear") == 18
    assert ops.count("DequantizeLinear") == 18 + 10  # and the 10 weights
    # 8-bit weights are stored as uint8 q + 128 (exact on every CPU), 4-bit ones as int8 (docs/deploy.md)
    weight_bits = int(bits[1])
    stored, offset = (onnx.TensorProto.UINT8, 128) if weight_bits == 8 else (onnx.TensorProto.INT8, 0)
    limit = 2 ** (weight_bits - 1)
    int_weights = [onnx.numpy_helper.to_array(t).astype(int) - offset for t in graph.initializer
                   if t.data_type == stored and t.dims and len(t.dims) > 1]
    assert len(int_weights) == 10 and all(w.min() >= -limit and w.max() <= limit - 1 for w in int_weights)
    with torch.no_grad():
        expected = qmodel(images)
    actual = OnnxRuntimeModel(path, threads=1)(images)  # another batch size than exported with
    # Every integer product is exact on every CPU (test below), so what remains is float: the runtime's
    # LayerNorm / softmax / GELU and rescaling differ from torch's in the last bits, and a value that lands
    # within that of a rounding boundary moves by one step of the next quantizer (docs/deploy.md, Runtime
    # arithmetic): about 1e-7 where none does (this test's images on AVX2), a few 1e-2 of the logits where
    # some do; 2 % of the largest logit allows such steps.
    assert (actual - expected).abs().max().item() < 0.02 * expected.abs().max().item()
    assert torch.equal(actual.argmax(1), expected.argmax(1))


def _one_quantized_linear(weight_bits: int) -> nn.Module:
    """A Linear whose first two weights of every output are the channel's largest (q = 2^(b-1) - 1 both),
    behind an 8-bit input quantizer on [0, 1] (zero point 0): inputs of 1 there give 255 x (2^(b-1) - 1)
    twice in one pair of products, above int16 for 8-bit weights."""
    from harness.model.instrument import attach_point
    from harness.quant.modules import ActQuantizer, QuantLinear

    torch.manual_seed(0)
    linear = nn.Linear(64, 16)
    with torch.no_grad():
        linear.weight[:, :2] = linear.weight.abs().amax(1, keepdim=True)
    layer = QuantLinear.from_float(linear, weight_bits).eval()
    quantizer = ActQuantizer(8)
    quantizer.freeze(torch.tensor(0.0), torch.tensor(1.0))
    attach_point(layer, "in", quantizer)
    return nn.Sequential(layer).eval()


def _integer_results(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer in float64 from its integers: exact int32 sums, and sums whose adjacent pairs of products
    are first clamped to int16 (the u8 x s8 kernel of x86 CPUs without VNNI, vpmaddubsw)."""
    from harness.model.instrument import get_point

    layer = model[0]
    quantizer = get_point(layer, "in")
    assert quantizer.zero_point.item() == 0
    # the integers in float32, as the fake quantizer and QuantizeLinear divide
    xq = torch.clamp(torch.round(x / quantizer.scale), 0, 255).double()
    limit = 2 ** (layer.weight_bits - 1)
    scale = layer.weight_scale.double().flatten()
    wq = torch.clamp(torch.round(layer.weight / layer.weight_scale), -limit, limit - 1).double()
    products = xq[..., None, :] * wq  # (..., out, in)
    pairs = products[..., 0::2] + products[..., 1::2]
    rescale = quantizer.scale.double() * scale
    bias = layer.bias.double()
    return products.sum(-1) * rescale + bias, pairs.clamp(-2**15, 2**15 - 1).sum(-1) * rescale + bias


@pytest.mark.parametrize("weight_bits", [8, 7, 4])
@pytest.mark.parametrize("weight_type", ["u8", "s8"])
def test_runtime_integer_products_are_exact_on_every_cpu_in_the_exported_form(tmp_path, weight_bits, weight_type):
    """Both integer kernel paths, forced by the stored weight type, on every machine: u8 x u8 and u8 x s8 with
    at most 7-bit weights are exact; u8 x s8 with 8-bit weights saturates where the CPU has AVX2 but no VNNI
    or AMX. The bound is the float32 rescaling only (int32 -> float, the two scales, the bias): a few roundings
    of the output's magnitude, taken as 16 units of float32 rounding; a step of the integers is 10^4 times more."""
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
    from harness.deploy.export import OnnxRuntimeModel, export_onnx
    from harness.store.machine import cpu_description, u8s8_pairs_saturate

    model = _one_quantized_linear(weight_bits)
    x = torch.rand(2, 8, 64, generator=torch.Generator().manual_seed(1))
    x[..., :2] = 1.0
    path = export_onnx(model, x[:1], tmp_path / "linear.onnx", weight_type=weight_type)
    actual = OnnxRuntimeModel(path, threads=1)(x).double()
    exact, saturating = _integer_results(model, x)
    bound = 16 * 2.0**-24 * (torch.maximum(exact.abs(), saturating.abs()) + model[0].bias.double().abs())
    assert ((saturating - exact).abs() > 100 * bound).any() == (weight_bits == 8)  # the inputs do reach int16
    matches_exact = bool(((actual - exact).abs() <= bound).all())
    matches_saturating = bool(((actual - saturating).abs() <= bound).all())
    assert matches_exact or matches_saturating, f"max |runtime - exact| {(actual - exact).abs().max():.3g}"
    saturates = u8s8_pairs_saturate(cpu_description())
    if weight_type == "u8" or weight_bits <= 7:
        assert matches_exact
    elif saturates is not None:  # a CPU whose kernels are known: x86 with AVX2
        assert matches_saturating == saturates and matches_exact == (not saturates)


def test_a_searched_quantizer_with_an_integer_zero_point_lowers_with_its_own_arithmetic(tmp_path):
    """A zero point added after rounding (docs/quantizer.md, Searched quantizers) is QuantizeLinear's arithmetic: the
    deployed module keeps it in torch (at x / s = k + 1/2 it rounds to even before the offset, unlike round(x / s + z)),
    and the file computes the same outputs in ONNX Runtime up to float32 summation (docs/deploy.md, What lowers)."""
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
    from harness.deploy.export import OnnxRuntimeModel, export_onnx
    from harness.model.instrument import get_point

    model = _one_quantized_linear(4)
    quantizer = get_point(model[0], "in")
    quantizer.set_params(torch.tensor(1 / 64), torch.tensor(3.0))
    assert quantizer.offset_after_round and deployability(model).deployable
    x = torch.rand(2, 8, 64, generator=torch.Generator().manual_seed(1)) * 3 - 0.04
    x[0, 0, :4] = torch.tensor([0.5, 1.5, 2.5, 3.5]) / 64  # halves: round(x / s) + 3 and round(x / s + 3) differ
    with torch.no_grad():
        expected = model(x)
        assert (deploy_model(model)(x) - expected).abs().max().item() < 1e-5  # MatMul against F.linear only
    actual = OnnxRuntimeModel(export_onnx(model, x[:1], tmp_path / "searched.onnx"), threads=1)(x)
    assert (actual - expected).abs().max().item() < 1e-5 * expected.abs().max().item()


@pytest.mark.parametrize("bits, config, reason", [
    ("w8a4", QuantConfig(), "4-bit activations: ONNX Runtime has integer kernels for 8-bit activations only"),
    ("w8a8", QuantConfig(attn_quantizer="log2"), "log2 post-softmax quantizer"),
    ("w8a8", QuantConfig(attn_quantizer="log_sqrt2"), "log_sqrt2 post-softmax quantizer"),
    ("w8a8", QuantConfig(profile="psaq"), "quantizer outside the standard placement"),
    ("w16a8", QuantConfig(), "16-bit weights do not fit the int8 storage"),
])
def test_placements_without_integer_form_are_simulated_only(tiny_vit, bits, config, reason):
    qmodel = _calibrated(tiny_vit, bits, config)
    check = deployability(qmodel)
    assert not check.deployable and any(line.startswith(reason) for line in check.reasons)
    with pytest.raises(HarnessError, match="^simulated only: "):
        deploy_model(qmodel)


def test_repq_searched_parameters_are_simulated_only(tiny_vit):
    """Asymmetric per-channel weights and the fractional zero points of the reparameterized post-LayerNorm inputs
    have no Q/DQ form here."""
    from methods.repq_vit.calibrator import RepQCalibrator

    torch.manual_seed(1)
    qmodel = quantize_model(tiny_vit, parse_bits("w8a8"), QuantConfig())
    RepQCalibrator().calibrate(qmodel, CalibrationContext(
        fp_model=tiny_vit, calibration=CalibrationSet(torch.randn(8, 3, 32, 32)), bits=parse_bits("w8a8"), seed=0,
        device=torch.device("cpu")))
    reasons = deployability(qmodel).reasons
    assert any(line.startswith("asymmetric weights") for line in reasons)
    assert any(line.startswith("fractional zero point") for line in reasons)  # the folded post-LayerNorm inputs


# What stays simulated per calibrator on the tiny ViT at W4A8 (docs/deploy.md, What lowers, by calibrator): the
# labels of simulated_quantizers' reasons (kind, site or granularity). A calibrator registered without an entry fails.
SIMULATED_BY_CALIBRATOR = {
    "minmax": set(), "percentile": set(), "omse": set(), "ranking": set(), "block_recon": set(),
    "repq": {"asymmetric weights", "fractional zero point", "log_sqrt2 post-softmax quantizer"},
    "ptq4vit": {"asymmetric weights", "per-head activation scales", "twin_uniform post-softmax quantizer",
                "twin_signed post-GELU quantizer"},
    "adalog": {"asymmetric weights", "per-head activation scales", "adalog post-softmax quantizer",
               "adalog post-GELU quantizer"},
    "aphq": {"asymmetric weights", "per-head activation scales"},
    "fimaq": {"asymmetric weights", "per-token activation scales", "per-head-and-token activation scales",
              "per-head-and-channel activation scales"},
}
_ALL_POINTS = {"patch_embed.proj.in", "attn.qkv.in", "attn.q", "attn.k", "attn.attn", "attn.v", "attn.proj.in",
               "mlp.fc1.in", "mlp.fc2.in", "head.in"}
# The activation quantizers that lower, blocks folded together; the rest of _ALL_POINTS stays simulated or, where the
# method leaves the image in floating point, is absent.
LOWERED_BY_CALIBRATOR = {
    **{name: _ALL_POINTS for name in ("minmax", "percentile", "omse", "ranking", "block_recon")},
    "repq": {"patch_embed.proj.in", "attn.q", "attn.k", "attn.v", "attn.proj.in", "mlp.fc2.in", "head.in"},
    "ptq4vit": {"attn.qkv.in", "attn.proj.in", "mlp.fc1.in", "head.in"},
    "adalog": {"attn.qkv.in", "attn.proj.in", "mlp.fc1.in", "head.in"},
    "aphq": {"attn.qkv.in", "attn.proj.in", "mlp.fc1.in", "mlp.fc2.in", "head.in"},  # fc2's input: post-ReLU
    "fimaq": {"head.in"},
}


def _smoke_calibrated(name: str, model: nn.Module) -> nn.Module:
    """``model`` calibrated by the registered calibrator ``name`` with its conformance-kit options, at W4A8 (8-bit
    activations, the width that lowers; AdaLog's smoke search has too few candidates for 8-bit weights)."""
    from harness.plugin.conformance import smoke_options
    from harness.plugin.options import build_options

    calibrator_class = CALIBRATORS.get(name)
    calibrator = calibrator_class(build_options(calibrator_class.Options, smoke_options(calibrator_class, name),
                                                name, f"calibrator {name!r}"))
    bits = parse_bits("w4a8")
    torch.manual_seed(1)
    qmodel = quantize_model(model, bits, QuantConfig())
    images = torch.randn(8, 3, 32, 32)
    calibrator.calibrate(qmodel, CalibrationContext(fp_model=model, calibration=CalibrationSet(images), bits=bits, seed=0,
                                                    device=torch.device("cpu")))
    return qmodel.eval()


def _label(reason: str) -> str:
    return reason.split(":")[0].split(" (")[0]


def _lowered_inputs(qmodel: nn.Module, images: torch.Tensor) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Every activation quantizer that lowers, with the input it receives on ``images``."""
    from harness.deploy.export import simulated_quantizers
    from harness.model.instrument import POINTS

    simulated = simulated_quantizers(qmodel)
    quantizers = {f"{name}.{point}": quantizer for name, module in qmodel.named_modules()
                  if module._modules.get(POINTS) is not None
                  for point, quantizer in module._modules[POINTS]._modules.items()}
    seen: dict[str, torch.Tensor] = {}
    hooks = [quantizer.register_forward_pre_hook(lambda _, args, where=where: seen.setdefault(where, args[0].detach()))
             for where, quantizer in quantizers.items() if where not in simulated]
    with torch.no_grad():
        qmodel(images)
    for hook in hooks:
        hook.remove()
    return {where: (quantizers[where], x) for where, x in seen.items()}


def _runtime_quantize_dequantize(pairs: list, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """QuantizeLinear → DequantizeLinear in ONNX Runtime, one pair per (scale, zero point) the exporter writes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, graph_inputs, graph_outputs = [], [], [], []
    for i, ((scale, zero_point), x) in enumerate(zip(pairs, inputs)):
        initializers += [numpy_helper.from_array(scale.numpy(), f"s{i}"),
                         numpy_helper.from_array(zero_point.numpy(), f"z{i}")]
        nodes += [helper.make_node("QuantizeLinear", [f"x{i}", f"s{i}", f"z{i}"], [f"q{i}"]),
                  helper.make_node("DequantizeLinear", [f"q{i}", f"s{i}", f"z{i}"], [f"y{i}"])]
        graph_inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, list(x.shape)))
        graph_outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, list(x.shape)))
    model = helper.make_model(helper.make_graph(nodes, "qdq", graph_inputs, graph_outputs, initializers),
                              opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {f"x{i}": x.float().numpy() for i, x in enumerate(inputs)})
    return [torch.from_numpy(y) for y in outputs]


@pytest.mark.parametrize("name", sorted(CALIBRATORS.names()))
def test_what_each_calibrator_lowers_to_qdq_and_what_stays_simulated(tiny_vit, one_thread, name):
    """Per registered calibrator: the exact set of quantizer kinds / sites / granularities that stay simulated, and
    for every quantizer that lowers, the exported form computes the simulated values. An activation's Q/DQ in ONNX
    Runtime rounds round(x / s) + z; the core's range-calibrated quantizer rounds round(x / s + z): the two differ only
    where x / s lands on a half (ties to even), by exactly one step s, so the bound is one step and such values are
    rare; a searched quantizer (zero point added after rounding) is QuantizeLinear's own arithmetic. A weight's
    integers times its scale are the simulated weight up to float32 rounding."""
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
    from harness.deploy.export import _DeployedWeight, _QuantizeDequantize, simulated_quantizers
    from harness.quant.modules import weight_quantized_layers

    assert name in SIMULATED_BY_CALIBRATOR, (f"calibrator {name!r} is registered but not in SIMULATED_BY_CALIBRATOR: "
                                             "state what it lowers here and in docs/deploy.md, What lowers")
    qmodel = _smoke_calibrated(name, tiny_vit)
    simulated = simulated_quantizers(qmodel)
    assert {_label(reason) for reason in simulated.values()} == SIMULATED_BY_CALIBRATOR[name]
    assert deployability(qmodel).deployable == (not simulated)

    lowered = _lowered_inputs(qmodel, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    assert {re.sub(r"^blocks\.\d+\.", "", where) for where in lowered} == LOWERED_BY_CALIBRATOR[name]
    exported = [_QuantizeDequantize(quantizer) for quantizer, _ in lowered.values()]
    runtime = _runtime_quantize_dequantize([(q.scale, q.zero_point) for q in exported],
                                           [x for _, x in lowered.values()])
    for (where, (quantizer, x)), actual in zip(lowered.items(), runtime):
        with torch.no_grad():
            expected = quantizer(x)
        steps = (actual - expected).abs() / quantizer.scale
        assert steps.max().item() <= 1 + 1e-4, f"{name}: {where} differs by {steps.max().item():.3g} steps"
        assert (steps > 0.5).float().mean().item() <= 0.01, f"{name}: {where} differs by a step too often"
        if quantizer.offset_after_round:
            assert torch.equal(actual, expected), f"{name}: {where}"
    for layer_name, layer in weight_quantized_layers(qmodel):
        if layer.weight_bits and layer_name not in simulated:
            with torch.no_grad():
                weight = _DeployedWeight(layer, transpose=False, weight_type="auto")()
                expected = layer.quantized_weight()
            assert torch.allclose(weight, expected, rtol=2.0**-23, atol=0), f"{name}: weight of {layer_name}"


@pytest.mark.slow  # five ONNX exports, about 3 s each on 2 shared cores
@pytest.mark.parametrize("name", sorted(name for name, simulated in SIMULATED_BY_CALIBRATOR.items() if not simulated))
def test_calibrators_that_lower_whole_export_the_simulated_logits(tiny_vit, one_thread, name, tmp_path):
    """A calibrator whose every quantizer lowers: the exported model in ONNX Runtime gives the simulated logits.
    The runtime's float kernels move values before a quantizer by about 1e-6, which carries a few across a rounding
    boundary (docs/deploy.md, Runtime arithmetic); the bound lets every input feature of the head be two steps s of
    its quantizer off in the same direction, 2 s max_j sum_i |W_ji| (measured here: 0.2 to 0.4 of one such step)."""
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
    from harness.deploy.export import OnnxRuntimeModel, export_onnx
    from harness.model.instrument import get_point

    qmodel = _smoke_calibrated(name, tiny_vit)
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    actual = OnnxRuntimeModel(export_onnx(qmodel, images[:2], tmp_path / "model.onnx"), threads=1)(images)
    with torch.no_grad():
        expected = qmodel(images)
        bound = 2 * get_point(qmodel.head, "in").scale * qmodel.head.quantized_weight().abs().sum(1).max()
    assert (actual - expected).abs().max().item() <= bound.item()


def test_uncalibrated_model_is_refused(tiny_vit):
    check = deployability(quantize_model(tiny_vit, parse_bits("w8a8"), QuantConfig()))
    assert check.reasons == ("activation quantizer not calibrated (its range is not frozen) "
                             "(18 quantizer(s), e.g. patch_embed.proj.in)",)


@pytest.mark.parametrize("cell, message", [
    ("../records/x", "error: malformed cell id '../records/x': a cell id is 16 hexadecimal digits (records/<id>.json)"),
    ("0123456789abcdef", "error: no valid record for cell 0123456789abcdef in {records}"),
])
def test_export_of_a_bad_or_missing_cell_is_one_line_exit_2(tmp_path, capsys, cell, message):
    from harness.entry.cli import main

    code = main(["export", "--cell", cell, "--results", str(tmp_path / "results"), str(tmp_path / "model.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err == message.format(records=tmp_path / "results" / "records") + "\n"
    assert not (tmp_path / "model.onnx").exists()


def test_export_names_what_is_wrong_with_an_invalid_record(tmp_path, capsys):
    from harness.entry.cli import main
    from harness.store.keys import RECORD_SCHEMA

    records = tmp_path / "results" / "records"
    records.mkdir(parents=True)
    record = {"schema": RECORD_SCHEMA, "cell_id": "0123456789abcdef", "status": "error", "error": "boom"}
    (records / "0123456789abcdef.json").write_text(json.dumps(record))
    code = main(["export", "--cell", "0123456789abcdef", "--results", str(tmp_path / "results"), str(tmp_path / "m.onnx")])
    assert code == 2
    assert capsys.readouterr().err == (f"error: no valid record for cell 0123456789abcdef in {records} "
                                       "(field 'method' is missing, expected str)\n")


def test_a_cell_is_rebuilt_from_its_record_with_the_same_id():
    from harness.run.grid import GridSpec, cell_from_record, expand

    spec = GridSpec(methods=("psaq",), tasks=("digits",), bits=("w4a8", "mp4a8"), seeds=(3,), calib=("ranking",),
                    generator_options={"iterations": 200}, quant=QuantConfig(keep_first_last_fp=True), limit=50)
    for cell in expand(spec):
        rebuilt = cell_from_record(json.loads(json.dumps(cell.config())))
        assert rebuilt == cell and rebuilt.keys("w").cell_id == cell.keys("w").cell_id


def test_export_of_a_finished_digits_cell_reproduces_its_accuracy_in_onnx_runtime(tmp_path, capsys):
    """run, then export the cell: the file evaluated by the task in ONNX Runtime gives the record's top-1."""
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
    pytest.importorskip("onnxscript", reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
    from harness.deploy.export import OnnxRuntimeModel
    from harness.entry.cli import main
    from harness.plugin.registry import TASKS

    common = ["--results", str(tmp_path / "results"), "--threads", "1"]
    assert main(["run", "--methods", "real", "--tasks", "digits", "--models", "digits_vit_seed0", "--bits", "w8a8",
                 "--seeds", "0", "--limit", "100", "--no-progress", "--no-report", *common]) == 0
    (record_path,) = (tmp_path / "results" / "records").glob("*.json")
    record = json.loads(record_path.read_text())
    assert main(["export", "--cell", record_path.stem, "--format", "onnx", *common, str(tmp_path / "cell.onnx")]) == 0
    assert capsys.readouterr().out.endswith(f"written: {tmp_path / 'cell.onnx'}\n")
    deployed = TASKS.get("digits")().evaluate(OnnxRuntimeModel(tmp_path / "cell.onnx", threads=1), "digits_vit_seed0",
                                              limit=100)
    assert abs(deployed["top1"] - record["metrics"]["top1"]) <= 1.0  # at most one of the 100 images


def test_deploy_grid_option_records_runtime_accuracy_or_the_reason_not(tmp_path):
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
    pytest.importorskip("onnxscript", reason="the deploy extra (onnx, onnxruntime, onnxscript) is not installed")
    from harness.run.grid import GridSpec
    from harness.run.runner import GridRunner
    from reports.render import write_report

    spec = GridSpec(methods=("real",), tasks=("digits",), models=("digits_vit_seed0",), bits=("w8a8", "w4a4"),
                    seeds=(0,), limit=50)
    runner = GridRunner(tmp_path)
    plain = {r["bits"]: r for r in runner.run(spec).records}
    assert all("deployment" not in r for r in plain.values())
    summary = GridRunner(tmp_path).run(dataclasses.replace(spec, deploy="onnxruntime"))
    records = {r["bits"]: r for r in summary.records}
    assert summary.computed == 2  # records without a deployment block are recomputed when one is asked for
    assert {bits: r["cell_id"] for bits, r in records.items()} == {bits: r["cell_id"] for bits, r in plain.items()}
    w8a8, w4a4 = records["w8a8"]["deployment"], records["w4a4"]["deployment"]
    assert w8a8["deployable"] and w8a8["metrics"]["top1"] == pytest.approx(records["w8a8"]["metrics"]["top1"], abs=2.0)
    # what decides the figures (docs/deploy.md, What decides a deployment figure)
    from harness.store.machine import cpu_description

    assert (w8a8["cpu"], w8a8["execution_provider"], w8a8["threads"], w8a8["weight_types"]) == (
        cpu_description(), "CPUExecutionProvider", torch.get_num_threads(), ["u8"])
    assert w8a8["difference"]["top1"] == w8a8["metrics"]["top1"] - records["w8a8"]["metrics"]["top1"]
    assert set(w8a8["latency_ms"]) == {"batch1", "batch32"} and 0 < w8a8["size_ratio"] < 1
    assert w4a4 == {"runtime": "onnxruntime", "version": w4a4["version"], "execution_provider": "CPUExecutionProvider",
                    "cpu": cpu_description(), "deployable": False,
                    "reason": "simulated only: 4-bit activations: ONNX Runtime has integer kernels for 8-bit "
                              "activations only (34 quantizer(s), e.g. patch_embed.proj.in)"}
    assert GridRunner(tmp_path).run(dataclasses.replace(spec, deploy="onnxruntime")).skipped == 2
    write_report(tmp_path, tmp_path / "report", ("md",))
    page = (tmp_path / "report" / "digits.md").read_text()
    from reports.aggregate import deployment_setup

    setup = deployment_setup(w8a8)
    assert setup.endswith(f", onnxruntime {w8a8['version']} CPUExecutionProvider, {w8a8['threads']} threads, weights u8")
    assert (f"| real | w8a8 | {setup} | 1 | deployable | {w8a8['metrics']['top1']:.2f} | "
            f"{w8a8['difference']['top1']:+.2f} |") in page
    assert f"| real | w4a4 | {deployment_setup(w4a4)} | 1 | simulated only: 4-bit activations: ONNX Runtime has " in page


def test_deploy_names_an_unknown_runtime():
    from harness.run.gridfile import spec_from_settings

    assert spec_from_settings({"deploy": "onnxruntime"}).deploy == "onnxruntime"
    with pytest.raises(HarnessError, match="^deploy accepts onnxruntime, got 'tensorrt'$"):
        spec_from_settings({"deploy": "tensorrt"})
