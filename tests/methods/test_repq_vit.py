import pytest
import torch

from calibration import calibrate
from harness.data.mm.stack import available
from harness.plugin.registry import CALIBRATORS, METHODS, discover_plugins
from harness.quant.modules import act_quantizers, weight_quantized_layers
from methods.repq_vit.calibrator import RepQCalibrator, RepQOptions


def _calibrate(model, image_size=32, **options):
    images = torch.randn(8, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    qmodel, info = calibrate(model, "w4a4", RepQCalibrator(RepQOptions(**options)), images, batch_size=4)
    return qmodel, images, info


def test_registered_with_the_authors_defaults():
    discover_plugins()
    assert CALIBRATORS.get("repq") is RepQCalibrator
    assert (METHODS.get("repq_vit").generator, METHODS.get("repq_vit").calibrator) == ("real", "repq")
    options = RepQOptions()
    assert (options.percentiles, options.input_bits, options.post_softmax) == ([0.999, 0.9999, 0.99999], 8,
                                                                               "log_sqrt2")


@pytest.mark.parametrize("model_name", ["tiny_vit", "tiny_swin"])
def test_quantizers_end_per_tensor_with_log_sqrt2_softmax_and_8_bit_image(model_name, request):
    model = request.getfixturevalue(model_name)
    qmodel, images, info = _calibrate(model)
    quantizers = dict(act_quantizers(qmodel))
    assert info["reparameterized_norms"] == (4 if model_name == "tiny_vit" else 9)
    assert all(q.frozen and q.scale.dim() == 0 for q in quantizers.values())
    softmax = [q for name, q in quantizers.items() if name.endswith("dfq_points.attn")]
    assert len(softmax) == (2 if model_name == "tiny_vit" else 4) and all(q.kind == "log_sqrt2" for q in softmax)
    assert quantizers["patch_embed.proj.dfq_points.in"].bits == 8
    assert all(layer.weight_zero_point is not None for _, layer in weight_quantized_layers(qmodel))
    with torch.no_grad():
        logits = qmodel(images)
    assert torch.isfinite(logits).all()


def test_reparameterization_keeps_the_fp_function(tiny_vit):
    qmodel, images, _ = _calibrate(tiny_vit)
    for _, quantizer in act_quantizers(qmodel):
        quantizer.mode = "bypass"
    for _, layer in weight_quantized_layers(qmodel):
        layer.weight_bits = None
    with torch.no_grad():
        torch.testing.assert_close(qmodel(images), tiny_vit(images), rtol=1e-4, atol=1e-5)
    assert not torch.equal(qmodel.blocks[0].norm1.weight, tiny_vit.blocks[0].norm1.weight)


def test_without_reparameterization_the_post_norm_quantizers_stay_per_channel(tiny_vit):
    qmodel, _, info = _calibrate(tiny_vit, reparameterize=False, post_softmax="uniform")
    assert info["reparameterized_norms"] == 0
    assert qmodel.blocks[0].attn.qkv.dfq_points["in"].scale.shape == (32,)
    assert qmodel.blocks[0].attn.dfq_points["attn"].kind == "uniform"


def test_mmdet_swin_norms_fold_as_in_the_authors_detection_code():
    """norm1 → attn.w_msa.qkv, norm2 → ffn.layers.0.0 in each block and the merging's norm → reduction,
    folded as the authors' COCO script folds them: the FP function is kept where no window is padded;
    where the map is padded, the padded zeros now stand for other values, as in their code."""
    if available() is not None:
        pytest.skip(f"needs the detseg extra: {available()}")
    from mmdet.models.backbones import SwinTransformer

    torch.manual_seed(0)
    backbone = SwinTransformer(embed_dims=16, depths=(1, 1), num_heads=(1, 2), window_size=7, strides=(4, 2),
                               out_indices=(0, 1), init_cfg=None)
    backbone.eval()
    qmodel, _, info = _calibrate(backbone, image_size=56)
    assert info["reparameterized_norms"] == 5
    assert qmodel.stages[0].blocks[0].attn.w_msa.qkv.dfq_points["in"].scale.dim() == 0
    for _, quantizer in act_quantizers(qmodel):
        quantizer.mode = "bypass"
    for _, layer in weight_quantized_layers(qmodel):
        layer.weight_bits = None
    with torch.no_grad():
        unpadded, padded = torch.randn(2, 3, 56, 56), torch.randn(2, 3, 48, 48)  # 14x14 and 12x12 maps, window 7
        for fp, folded in zip(backbone(unpadded), qmodel(unpadded)):
            torch.testing.assert_close(folded, fp, rtol=1e-4, atol=1e-5)
        assert all((folded - fp).abs().max() > 1e-3 * fp.abs().max()
                   for fp, folded in zip(backbone(padded), qmodel(padded)))
