"""Task ``coco`` on a tiny Mask R-CNN scored against its own FP predictions (mmdet's CocoMetric)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import timm
import torch

from harness.entry.cli import main
from harness.errors import HarnessError
from harness.model.arch import instrumented
from harness.quant.bits import parse_bits
from harness.quant.convert import QuantConfig, quantize_model
from harness.store.io import file_sha256
from tasks.coco import CocoTask

MODEL = "mask_rcnn_swin_t"


def _task(setup, **changes) -> CocoTask:
    return CocoTask(CocoTask.Options(**{**setup.options, **changes}))


@pytest.fixture(scope="module")
def grid(tiny_coco, run_grid, tmp_path_factory):
    """The README's COCO command (README, Tasks) on the tiny instance, plus FP, W4A4 and real images."""
    records = run_grid(tiny_coco, tmp_path_factory.mktemp("results"), "--methods", "psaq,noise,real",
                       "--tasks", "coco", "--bits", "fp,w4a8,w4a4", "--limit", "4")
    return {(record["method"], record["bits"]): record for record in records}


def test_fp_scores_100_against_its_own_predictions_and_quantization_lowers_it(tiny_coco, grid):
    annotations = json.loads((Path(tiny_coco.options["data_root"]) / "annotations/instances_val2017.json").read_text())
    assert len(annotations["annotations"]) >= 4  # the FP model's own detections are the ground truth
    assert all(record["status"] == "ok" for record in grid.values())
    for method in ("psaq", "noise", "real"):
        assert grid[(method, "fp")]["metrics"] == {"box_ap": 100.0, "mask_ap": 100.0}
        for bits in ("w4a8", "w4a4"):
            record = grid[(method, bits)]
            assert set(record["metrics"]) == {"box_ap", "mask_ap"}
            assert record["metrics"]["box_ap"] < 90 and record["fp_metrics"]["box_ap"] == 100.0


def test_generators_work_on_the_backbone_at_the_prior_resolution(grid):
    psaq = grid[("psaq", "w4a8")]
    assert psaq["quantizer"]["scope"] == "backbone" and psaq["num_calibration_images"] == 32
    assert psaq["calibration_info"]["one_hot_term"] is False  # no classes on a backbone (README, Tasks)
    # --limit 4 covers the tiny instance's 4 val images, so it is recorded as no limit (one leaderboard row)
    assert psaq["options"]["limit"] is None and grid[("real", "w4a8")]["num_calibration_images"] == 4
    hits = {grid[("psaq", bits)]["generator_cache_hit"] for bits in ("w4a8", "w4a4")}
    assert hits == {True, False}  # synthesized once per (model, seed), reused across bit widths


def test_quantize_all_also_converts_neck_and_heads(tiny_coco, run_grid, tmp_path):
    records = run_grid(tiny_coco, tmp_path, "--methods", "noise", "--tasks", "coco", "--bits", "w8a8",
                       "--task-opt", "quantize=all")
    quantizer = records[0]["quantizer"]
    assert records[0]["status"] == "ok" and quantizer["scope"] == "backbone, neck and heads"
    backbone_only = quantize_model(_task(tiny_coco).load_model(MODEL), parse_bits("w8a8"), QuantConfig(),
                                   part=lambda model: model.backbone)
    backbone_layers = sum(1 for m in backbone_only.modules() if hasattr(m, "weight_bits"))
    assert quantizer["weight_quantized_layers"] > backbone_layers + 10  # FPN, RPN and RoI-head convs and FCs


def test_instrumented_window_attention_matches_mmdet(tiny_coco):
    backbone = _task(tiny_coco).load_model(MODEL).backbone
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = backbone(images)
        with instrumented(backbone) as model:
            assert sum(type(m).__name__ == "InstrumentedWindowMSA" for m in model.modules()) == 4
            ours = model(images)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(reference, ours))


def test_psaq_profile_is_refused_for_mmdet_backbones(tiny_coco):
    with pytest.raises(HarnessError, match="profile 'psaq' covers timm ViT/DeiT/Swin only"):
        quantize_model(_task(tiny_coco).load_model(MODEL), parse_bits("w4a4"), QuantConfig(profile="psaq"),
                       part=lambda model: model.backbone)


def test_layout_errors_name_the_path(tiny_coco, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(tiny_coco.options["data_root"], root)
    model = _task(tiny_coco).load_model(MODEL)
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(HarnessError, match=re.escape(f"annotation file not found: {root}/annotations/instances_val2017.json")):
        _task(tiny_coco, data_root=str(root)).evaluate(model, MODEL)
    shutil.copy(tiny_coco.options["data_root"] + "/annotations/instances_val2017.json", root / "annotations")
    shutil.rmtree(root / "val2017")
    with pytest.raises(HarnessError, match=re.escape(f"image folder not found: {root}/val2017")) as error:
        _task(tiny_coco, data_root=str(root)).evaluate(model, MODEL)
    assert "expected COCO 2017" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(HarnessError, match="coco needs its data root: pass --data-root DIR"):
        _task(tiny_coco, data_root=None).evaluate(model, MODEL)
    shutil.rmtree(root / "train2017")
    with pytest.raises(HarnessError, match=re.escape(f"{root}/train2017 does not exist")):
        _task(tiny_coco, data_root=str(root)).calibration_images(MODEL, 2, 0)


def test_checkpoint_errors_name_the_file(tiny_coco, tmp_path):
    with pytest.raises(HarnessError, match=re.escape(f"checkpoint {tmp_path}/absent.pth does not exist")):
        _task(tiny_coco, checkpoint=str(tmp_path / "absent.pth")).load_model(MODEL)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(HarnessError, match=re.escape(f"checkpoint {garbage} is unreadable")):
        _task(tiny_coco, checkpoint=str(garbage)).load_model(MODEL)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"backbone.patch_embed.projection.weight": torch.zeros(1)}}, other)
    with pytest.raises(HarnessError, match=re.escape(f"checkpoint {other} does not match the model")):
        _task(tiny_coco, checkpoint=str(other)).load_model(MODEL)


def test_without_a_checkpoint_the_error_names_the_expected_cached_file(tiny_coco, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(HarnessError) as error:
        CocoTask(CocoTask.Options(data_root=tiny_coco.options["data_root"])).weights_id(MODEL)
    message = str(error.value)
    assert f"{tmp_path}/hub/checkpoints/mask_rcnn_swin-t-p4-w7_fpn_1x_coco_" in message
    assert "https://download.openmmlab.com/" in message and "--checkpoint FILE" in message


def test_mmengine_checkpoints_load_with_a_narrow_allowlist(tiny_coco, tmp_path):
    """The tiny checkpoint carries numpy scalars and a HistoryBuffer (whose state pickles getattr)."""
    from mmengine.logging import HistoryBuffer

    class Sneaky:
        def __reduce__(self):
            return getattr, (HistoryBuffer, "__init__")

    state = torch.load(tiny_coco.options["checkpoint"], map_location="cpu", weights_only=False)
    assert isinstance(state["meta"]["loss"], HistoryBuffer)
    path = tmp_path / "sneaky.pth"
    torch.save({**state, "meta": Sneaky()}, path)
    with pytest.raises(HarnessError, match="outside the allowlist"):
        _task(tiny_coco, checkpoint=str(path)).load_model(MODEL)


def test_psaq_v2_distills_the_backbone_features(tiny_coco, run_grid, tmp_path):
    """PSAQ-ViT V2 on a detector: no classes, so D is the MSE of the backbone's multi-scale features."""
    records = run_grid(tiny_coco, tmp_path, "--methods", "psaq_v2", "--tasks", "coco", "--bits", "w4a4",
                       "--gen-opt", "psaq_v2_init.prior_iterations=2", "--tune-opt", "iterations=4",
                       "--tune-opt", "rounds=2")
    record = records[0]
    assert record["status"] == "ok" and record["tuner_info"]["discrepancy"] == "mse"
    rounds = record["tuner_info"]["rounds"]
    assert len(rounds) == 2 and all(r["d_after_student"] > 0 for r in rounds)
    assert set(record["metrics"]) == {"box_ap", "mask_ap"}


def test_psaq_v2_with_neck_and_heads_quantized_still_distills_the_backbone(tiny_coco, run_grid, tmp_path):
    """The heads' raw outputs differ in size between teacher and student; D stays on the backbone."""
    records = run_grid(tiny_coco, tmp_path, "--methods", "psaq_v2", "--tasks", "coco", "--bits", "w4a4",
                       "--gen-opt", "psaq_v2_init.prior_iterations=2", "--tune-opt", "iterations=4",
                       "--tune-opt", "rounds=2", "--task-opt", "quantize=all")
    record = records[0]
    assert record["status"] == "ok", record.get("error")
    assert record["quantizer"]["scope"] == "backbone, neck and heads"
    assert record["tuner_info"]["discrepancy"] == "mse"
    assert all(r["d_after_samples"] > 0 for r in record["tuner_info"]["rounds"])


@pytest.mark.parametrize("name, blocks", [("mask_rcnn_swin_t", 12), ("mask_rcnn_swin_s", 24),
                                          ("cascade_mask_rcnn_swin_t", 12), ("cascade_mask_rcnn_swin_s", 24)])
def test_every_registered_config_builds_and_its_backbone_is_instrumented(instrumented_blocks, name, blocks):
    task = CocoTask()
    assert instrumented_blocks(task, name) == blocks
    assert task.prior(name).input_size == (3, 224, 224) and task.prior(name).num_classes is None


def test_a_run_prints_no_library_warnings(tiny_coco, warnings_printed, tmp_path):
    """mmengine's pkg_resources notice printed twice on every run before harness.data.mm.stack silenced it."""
    status, warnings = warnings_printed(tiny_coco, tmp_path, "--methods", "noise", "--tasks", "coco", "--bits", "w8a8")
    assert status == 0 and warnings == []


def test_block_recon_reconstructs_the_swin_blocks_also_with_neck_and_heads_quantized(tiny_coco, run_grid, tmp_path):
    """mmdet's Swin blocks take the feature map's size beside their input; block_recon passes it on."""
    records = run_grid(tiny_coco, tmp_path, "--methods", "noise", "--calib", "block_recon", "--tasks", "coco",
                       "--bits", "w4a8", "--gen-opt", "num_images=4", "--calib-opt", "iterations=3",
                       "--task-opt", "quantize=all")
    record = records[0]
    assert record["status"] == "ok" and record["quantizer"]["scope"] == "backbone, neck and heads"
    errors = record["calibrator_info"]["block_mse"]
    assert list(errors) == [f"model.backbone.stages.{stage}.blocks.0" for stage in range(4)]
    assert all(error["learned_tensors"] == 12 and error["before"] > 0 for error in errors.values())


def test_the_headline_command_runs_spdfq_through_the_class_source(tiny_coco, tiny_classifier, run_grid, grid_argv,
                                                                  tmp_path, capsys):
    """`--methods psaq_v2,spdfq --tasks coco --bits w4a8`: spdfq synthesizes through the classifier the
    backbone was pre-trained as and calibrates the detector's backbone; psaq_v2 stays label-free."""
    classifier = tiny_classifier(tiny_coco)
    records = run_grid(tiny_coco, tmp_path, "--methods", "psaq_v2,spdfq", "--tasks", "coco", "--bits", "w4a8",
                       "--task-opt", f"prior_classifier={classifier}", "--gen-opt", "num_images=4",
                       "--gen-opt", "psaq_v2_init.prior_iterations=2", "--gen-opt", "spdfq.iterations=3",
                       "--gen-opt", "spdfq.warmup=1", "--tune-opt", "psaq_v2.iterations=4",
                       "--tune-opt", "psaq_v2.rounds=2", "--calib-opt", "block_recon.iterations=2")
    cells = {record["method"]: record for record in records}
    assert {method: record["status"] for method, record in cells.items()} == {"psaq_v2": "ok", "spdfq": "ok"}
    spdfq = cells["spdfq"]
    assert spdfq["calibration_info"]["class_source"] == {
        "kind": "classifier", "classifier": "swin_tiny_patch4_window7_224.ms_in1k",
        "weights_sha256": file_sha256(Path(classifier))[:16]}
    assert spdfq["options"]["task"]["class_source"] == "classifier" and spdfq["num_calibration_images"] == 4
    assert len(spdfq["calibrator_info"]["block_mse"]) == 4 and set(spdfq["metrics"]) == {"box_ap", "mask_ap"}
    assert "class_source" not in cells["psaq_v2"]["calibration_info"]
    # the dry run finds spdfq's set where the run put it (its key includes the class source)
    capsys.readouterr()
    assert main(grid_argv(tiny_coco, tmp_path, "--methods", "spdfq", "--tasks", "coco", "--bits", "w4a4", "--dry-run",
                         "--task-opt", f"prior_classifier={classifier}", "--gen-opt", "num_images=4",
                         "--gen-opt", "spdfq.iterations=3", "--gen-opt", "spdfq.warmup=1")) == 0
    planned = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("spdfq ")]
    assert [line[5:7] for line in planned] == [["to", "run"]] and planned[0][7] == "cached"


def test_without_a_class_source_spdfq_is_refused_before_the_grid(tiny_coco, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "results"
    options = dict(tiny_coco.options)
    argv = ["run", "--methods", "psaq_v2,spdfq", "--tasks", "coco", "--bits", "w4a8", "--models", MODEL,
            "--data-root", options.pop("data_root"), "--checkpoint", options.pop("checkpoint"), "--results", str(out),
            *[item for key, value in options.items() for item in ("--task-opt", f"{key}={value}")]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "error: 1 (method, task, model) combination(s) of this grid cannot run, so nothing ran: spdfq on coco "
        "mask_rcnn_swin_t: generator 'spdfq' needs classes (class logits of the model images are synthesized through): "
        "no class source for mask_rcnn_swin_t: no weights for swin_tiny_patch4_window7_224.ms_in1k: expected "
        f"model.safetensors of timm/swin_tiny_patch4_window7_224.ms_in1k in the Hugging Face hub cache, at {tmp_path}/hub/")
    assert "or pass --task-opt prior_classifier=FILE (--skip-unsupported runs the rest)" in err
    assert not out.exists()
    with pytest.raises(HarnessError, match=r"no class source for mask_rcnn_swin_t: prior_classifier /absent.pt does"):
        _task(tiny_coco, prior_classifier="/absent.pt").class_source(MODEL)


def test_backbone_head_puts_the_classifier_s_head_on_the_detector_s_own_backbone(tiny_coco, tiny_classifier):
    from harness.data.mm.class_source import BackboneHead

    task = _task(tiny_coco, prior_classifier=tiny_classifier(tiny_coco), class_source="backbone_head")
    model = task.load_model(MODEL)
    target = task.synthesis_target(MODEL, model, classes=True)
    module = target.load()
    assert isinstance(module, BackboneHead) and module.backbone is model.backbone
    assert target.prior.num_classes == 1000 and target.class_source["kind"] == "backbone_head"
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.backbone(images)[-1]
        assert torch.allclose(module(images), module.head(features.mean(dim=(2, 3))))
    assert task.synthesis_target(MODEL, model, classes=False).class_source is None


def test_psaq_keeps_its_one_hot_term_through_the_class_source_on_request(tiny_coco, tiny_classifier, run_grid,
                                                                          tmp_path):
    """At 64 px: timm's Swin shrinks a window to its stage's feature map, at 32 px the last to one token,
    which leaves PSAQ-ViT's per-window similarities (class token dropped) empty."""
    records = run_grid(tiny_coco, tmp_path, "--methods", "psaq", "--tasks", "coco", "--bits", "w4a8",
                       "--gen-opt", "psaq.num_images=4", "--gen-opt", "psaq.batch_size=4",
                       "--gen-opt", "psaq.one_hot_on_backbones=true", "--task-opt", "prior_size=64",
                       "--task-opt", f"prior_classifier={tiny_classifier(tiny_coco, size=64)}")
    info = records[0]["calibration_info"]
    assert records[0]["status"] == "ok" and info["one_hot_term"] is True
    assert info["class_source"]["classifier"] == "swin_tiny_patch4_window7_224.ms_in1k"
    assert records[0]["label"].startswith("psaq {num_images=4, batch_size=4, iterations=8, warmup=2, "
                                          "one_hot_on_backbones=True, ")


@pytest.mark.parametrize("name", list(CocoTask.models))
def test_every_registered_backbone_maps_to_its_named_timm_classifier(detseg, name):
    """The classifier built from the backbone's config has the parameter shapes of the named timm model,
    so timm's ImageNet weights for it load (checked on the meta device: nothing is allocated)."""
    from harness.data.mm.class_source import classifier_architecture

    task, classifier = CocoTask(), CocoTask.models[name].classifier
    with torch.device("meta"):
        built = timm.create_model(classifier, **classifier_architecture(task.config(name).model.backbone))
        named = timm.create_model(classifier)
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in named.state_dict().items()}
