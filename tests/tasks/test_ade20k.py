"""Task ``ade20k`` on tiny UperNets (Swin and DeiT backbones) scored against their own FP predictions (mmseg's IoUMetric)."""
from __future__ import annotations

import re
import shutil

import pytest
import torch

from harness.errors import HarnessError
from harness.model.arch import instrumented, is_instrumented_attention
from tasks.ade20k import ADE20KTask


def _task(setup, **changes) -> ADE20KTask:
    return ADE20KTask(ADE20KTask.Options(**{**setup.options, **changes}))


def test_fp_scores_100_against_its_own_labels_and_w4a4_lowers_it(tiny_ade20k, run_grid, tmp_path):
    records = run_grid(tiny_ade20k, tmp_path, "--methods", "psaq,real", "--tasks", "ade20k", "--bits", "fp,w4a4")
    cells = {(record["method"], record["bits"]): record for record in records}
    assert all(record["status"] == "ok" for record in records) and len(records) == 4
    for method in ("psaq", "real"):
        assert cells[(method, "fp")]["metrics"]["miou"] == 100.0
        quantized = cells[(method, "w4a4")]
        assert set(quantized["metrics"]) == {"miou", "aacc"} and quantized["metrics"]["miou"] < 80
        assert quantized["quantizer"]["scope"] == "backbone"


def test_instrumented_attention_matches_mmseg(tiny_ade20k):
    """The explicit attention (with its points) computes what mmseg's own forward computes."""
    backbone = _task(tiny_ade20k).load_model(tiny_ade20k.model_name).backbone
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = backbone(images)
        with instrumented(backbone) as model:
            assert sum(map(is_instrumented_attention, model.modules())) == 4
            ours = model(images)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(reference, ours))
    assert not any(hasattr(module, "qkv") for module in backbone.modules() if isinstance(module, torch.nn.MultiheadAttention))


def test_layout_errors_name_the_path(tiny_ade20k, tmp_path):
    root = tmp_path / "ade"
    shutil.copytree(tiny_ade20k.options["data_root"], root)
    model = _task(tiny_ade20k).load_model(tiny_ade20k.model_name)
    shutil.rmtree(root / "annotations" / "validation")
    with pytest.raises(HarnessError, match=re.escape(f"label-map folder not found: {root}/annotations/validation")) as error:
        _task(tiny_ade20k, data_root=str(root)).evaluate(model, tiny_ade20k.model_name)
    assert "ADEChallengeData2016" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name, blocks", [("upernet_swin_t", 12), ("upernet_swin_s", 24), ("upernet_deit_s", 12),
                                          ("upernet_deit_b", 12), ("upernet_vit_b", 12)])
def test_every_registered_config_builds_and_its_backbone_is_instrumented(instrumented_blocks, name, blocks):
    task = ADE20KTask()
    assert instrumented_blocks(task, name) == blocks
    assert task.prior(name).input_size == (3, 224, 224)


def test_a_run_prints_no_library_warnings(tiny_ade20k, warnings_printed, tmp_path):
    """mmseg warns about its own ADE20K configs (reduce_zero_label, avg_non_ignore) once per dataset built,
    and mmengine's logger about a metric without a prefix."""
    status, warnings = warnings_printed(tiny_ade20k, tmp_path, "--methods", "noise,real", "--tasks", "ade20k",
                                        "--bits", "w8a8")
    assert status == 0 and warnings == []


def test_block_recon_reconstructs_every_backbone_block(tiny_ade20k, run_grid, tmp_path):
    records = run_grid(tiny_ade20k, tmp_path, "--methods", "noise", "--calib", "block_recon", "--tasks", "ade20k",
                       "--bits", "w4a8", "--gen-opt", "num_images=4", "--calib-opt", "iterations=3")
    errors = records[0]["calibrator_info"]["block_mse"]
    names = {"upernet_swin_t": [f"stages.{stage}.blocks.0" for stage in range(4)],
             "upernet_deit_s": [f"layers.{layer}" for layer in range(4)]}[tiny_ade20k.model_name]
    assert records[0]["status"] == "ok" and list(errors) == names
    assert all(error["learned_tensors"] == 12 and error["after"] > 0 for error in errors.values())


def test_without_a_checkpoint_the_error_names_the_expected_cached_file(tmp_path, monkeypatch, detseg):
    """mmseg lists its releases in metafile.yaml (mmdet in metafile.yml)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(HarnessError) as error:
        ADE20KTask().weights_id("upernet_swin_t")
    assert str(error.value) == (
        f"no weights for ade20k model upernet_swin_t: expected {tmp_path}/hub/checkpoints/upernet_swin_tiny_patch4_"
        "window7_512x512_160k_ade20k_pretrain_224x224_1K_20210531_112542-e380ad3e.pth (mmengine's download cache; "
        "fetch https://download.openmmlab.com/mmsegmentation/v0.5/swin/upernet_swin_tiny_patch4_window7_512x512_160k_"
        "ade20k_pretrain_224x224_1K/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_20210531_"
        "112542-e380ad3e.pth where there is network), or --checkpoint FILE")
