import pytest
import torch

from harness.errors import HarnessError
from harness.plugin.method import CalibrationContext, CalibrationSet
from harness.plugin.options import build_options
from harness.plugin.registry import CALIBRATORS
from harness.quant.bits import parse_bits
from harness.quant.capture import LAYER_OUTPUT, Target, capture
from harness.quant.convert import QuantConfig, quantize_model
from harness.quant.modules import act_quantizers, weight_quantized_layers
from methods.block_recon.calibrator import BlockReconOptions, BlockReconstruction

torch.set_num_threads(1)
CPU = torch.device("cpu")
BITS = parse_bits("w4a4")


def _calibrate(model, calibrator, attn_quantizer="uniform", **options):
    qmodel = quantize_model(model, BITS, QuantConfig(attn_quantizer=attn_quantizer))
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calibrator_class = CALIBRATORS.get(calibrator)
    context = CalibrationContext(fp_model=model, calibration=CalibrationSet(images), bits=BITS, seed=0, device=CPU,
                                 batch_size=8)
    info = calibrator_class(calibrator_class.Options(**options)).calibrate(qmodel, context)
    return qmodel, images, info


def _block_errors(model, qmodel, images):
    """MSE of every block's output, quantized model (its own quantized inputs) vs FP."""
    names = [name for name, module in model.named_modules() if type(module).__name__.endswith("Block")]
    fp = capture(model, images, {n: Target(model.get_submodule(n), LAYER_OUTPUT) for n in names}, CPU, 16)
    quantized = capture(qmodel, images, {n: Target(qmodel.get_submodule(n), LAYER_OUTPUT) for n in names}, CPU, 16)
    return [(quantized[n] - fp[n]).square().mean().item() for n in names]


def test_registered_with_spec_defaults():
    assert CALIBRATORS.get("block_recon") is BlockReconstruction
    options = BlockReconOptions()
    assert (options.iterations, options.lr, options.quantized_inputs) == (100, 4e-5, True)
    with pytest.raises(HarnessError):
        build_options(BlockReconOptions, {"lr": 0}, "block_recon", "block_recon")


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_reconstruction_beats_minmax_on_every_block(fixture, request):
    model = request.getfixturevalue(fixture)
    recon, images, info = _calibrate(model, "block_recon", lr=1e-3, iterations=30)
    minmax, _, _ = _calibrate(model, "minmax")
    assert all(block["after"] < block["before"] for block in info["block_mse"].values())
    recon_errors, minmax_errors = _block_errors(model, recon, images), _block_errors(model, minmax, images)
    assert len(recon_errors) == len(info["block_mse"]) and all(r < m for r, m in zip(recon_errors, minmax_errors))


def test_spec_learning_rate_still_lowers_the_error(tiny_vit):
    _, _, info = _calibrate(tiny_vit, "block_recon", iterations=20)
    assert all(block["after"] < block["before"] for block in info["block_mse"].values())


@pytest.mark.parametrize("options", [dict(attn_quantizer="log2"), dict(quantized_inputs=False)])
def test_fp_model_untouched_and_quantizers_frozen_with_fixed_scales(tiny_vit, options):
    state = {key: value.clone() for key, value in tiny_vit.state_dict().items()}
    modules = [(name, type(module)) for name, module in tiny_vit.named_modules()]
    qmodel, _, info = _calibrate(tiny_vit, "block_recon", iterations=3, **options)
    assert all(torch.equal(value, state[key]) for key, value in tiny_vit.state_dict().items())
    assert [(name, type(module)) for name, module in tiny_vit.named_modules()] == modules
    assert all(p.grad is None for p in tiny_vit.parameters())
    quantizers = act_quantizers(qmodel)
    assert quantizers and all(q.frozen for _, q in quantizers)
    kinds = {q.kind for _, q in quantizers}
    assert kinds == ({"uniform", "log2"} if options.get("attn_quantizer") else {"uniform"})
    for _, module in quantizers + weight_quantized_layers(qmodel):  # scales back to buffers
        assert not any(name.endswith("scale") for name, _ in module.named_parameters(recurse=False))
    assert info["input_source"] == ("fp" if options.get("quantized_inputs") is False else "quantized")
    first = torch.randn(5, 3, 32, 32)
    with torch.no_grad():  # frozen ranges: the output of an image does not depend on its batch
        assert torch.allclose(qmodel(first)[:2], qmodel(first[:2]), atol=1e-5)
