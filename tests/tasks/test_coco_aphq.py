"""APHQ-ViT on a detector (docs/methods.md, APHQ-ViT, Detection): the region proposals as the objective, the
mmdet Swin backbone's units, and both quantization scopes."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from harness.quant.reconstruction import perturbation_hessian
from tasks.coco.objective import ProposalDivergence

LEVELS = ((3, 4, 4), (3, 2, 2))  # (anchors, height, width) per FPN level


def _proposals(generator: torch.Generator, images: int, scale: float = 3.0) -> tuple[list, list]:
    objectness = [scale * torch.randn(images, *shape, generator=generator, dtype=torch.float64) for shape in LEVELS]
    boxes = [torch.randn(images, 4 * a, h, w, generator=generator, dtype=torch.float64) for a, h, w in LEVELS]
    return objectness, boxes


def _one_image(objectness: list, boxes: list, reference: tuple[list, list]) -> torch.Tensor:
    """The authors' detection loss for a batch of one image, written out: per level the binary KL (clamped to
    [1e-7, 1 - 1e-7]) mean over the level, the smooth L1 of the masked deltas mean over the level; each sum over
    levels divided by its detached value."""
    classification, regression = 0, 0
    for o, b, r, rb in zip(objectness, boxes, *reference):
        p, q = torch.sigmoid(o).clamp(1e-7, 1 - 1e-7), r.clamp(1e-7, 1 - 1e-7)
        classification = classification + (q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())).mean()
        mask = (r > 0.7).repeat_interleave(4, dim=1)
        regression = regression + F.smooth_l1_loss(b * mask, rb * mask, reduction="mean")
    return classification / classification.detach() + regression / regression.detach()


def test_the_proposal_objective_normalizes_each_image_as_the_authors_one_image_batches_do():
    generator = torch.Generator().manual_seed(0)
    objective = ProposalDivergence(lambda part, images: part(images))
    reference = objective.reference(_proposals(generator, 3))
    outputs = [[t.requires_grad_() for t in group] for group in _proposals(generator, 3)]
    value = objective.loss(outputs, reference)
    value.backward()
    for image in range(3):
        single = [[t[image:image + 1].detach().clone().requires_grad_() for t in group] for group in outputs]
        expected = _one_image(*single, tuple([t[image:image + 1] for t in group] for group in reference))
        expected.backward()
        for batched, alone in zip(outputs[0] + outputs[1], single[0] + single[1]):
            torch.testing.assert_close(batched.grad[image:image + 1], alone.grad, rtol=1e-12, atol=1e-15)
    assert value.item() == pytest.approx(2 * 3)  # every image's two terms, each normalized to 1


def test_without_confident_anchors_the_regression_term_is_left_out_not_nan():
    generator = torch.Generator().manual_seed(1)
    objective = ProposalDivergence(lambda part, images: part(images))
    objectness, boxes = _proposals(generator, 2)
    reference = objective.reference(([o - 100 for o in objectness], boxes))  # every FP objectness ~ 0
    outputs = [[t.requires_grad_() for t in group] for group in _proposals(generator, 2)]
    value = objective.loss(outputs, reference)
    value.backward()
    assert value.item() == pytest.approx(2)  # the classification term of each image
    assert all(torch.isfinite(t.grad).all() for t in outputs[0])
    assert all((t.grad == 0).all() for t in outputs[1])


def test_a_per_image_objective_keeps_one_hessian_per_image_scaled_to_mean_one():
    plus = torch.tensor([[[1.0, 3.0]], [[0.5, 0.5]]], dtype=torch.float64)
    minus = torch.tensor([[[0.0, 1.0]], [[0.0, 0.25]]], dtype=torch.float64)
    shifts = []

    def gradients(module, model, shift):
        shifts.append(shift)
        return plus if shift > 0 else minus

    def hessian(per_image: bool) -> torch.Tensor:
        output = SimpleNamespace(perturbation=1e-3, per_image=per_image)
        return perturbation_hessian(SimpleNamespace(output=output, output_gradients=gradients, fp_model=None), None)

    # |plus - minus| = [[1, 2]], [[0.5, 0.25]]: each image divided by its mean
    torch.testing.assert_close(hessian(True), torch.tensor([[[2 / 3, 4 / 3]], [[4 / 3, 2 / 3]]], dtype=torch.float64))
    torch.testing.assert_close(hessian(False), torch.tensor([[[0.75, 1.125]]], dtype=torch.float64))
    assert shifts == [1e-3, -1e-3, 1e-3, -1e-3]


@pytest.fixture(scope="module")
def reconstructed(tiny_coco, run_grid, tmp_path_factory):
    """APHQ-ViT (smoke budgets, 4 real images) on the tiny Mask R-CNN, backbone only and with neck and heads."""
    def run(scope: str) -> dict:
        records = run_grid(tiny_coco, tmp_path_factory.mktemp(scope), "--data", "real", "--calib", "aphq",
                           "--tasks", "coco", "--bits", "w4a4", "--task-opt", f"quantize={scope}", "--limit", "4",
                           "--calib-opt", "iterations=3", "--calib-opt", "mlp_iterations=3",
                           "--calib-opt", "search_candidates=16", "--calib-opt", "search_rounds=1")
        assert [record["status"] for record in records] == ["ok"]
        return records[0]
    return {scope: run(scope) for scope in ("backbone", "all")}


def test_aphq_reconstructs_the_mmdet_swin_backbone_unit_by_unit(reconstructed):
    record = reconstructed["backbone"]
    info = record["calibrator_info"]
    stages = range(4)  # the tiny Swin: one block per stage, a patch merging after the first three
    assert list(info["block_loss"]) == ["patch_embed"] + [
        name for stage in stages for name in (f"stages.{stage}.blocks.0", f"stages.{stage}.downsample")][:-1]
    assert list(info["mlp_loss"]) == [f"stages.{stage}.blocks.0" for stage in stages]
    assert all(math.isfinite(value) for part in ("block_loss", "mlp_loss") for value in info[part].values())
    assert info["reparameterized_norms"] == 11  # norm1 and norm2 of four blocks, three patch mergings
    assert record["fp_metrics"]["box_ap"] == 100.0 and 0 <= record["metrics"]["box_ap"] < 100.0


def test_with_neck_and_heads_quantized_the_backbone_is_reconstructed_the_same_and_the_neck_after_it(reconstructed):
    """The proposals taken inside the whole detector are the FP neck and RPN on the backbone's features: the
    backbone's units see the same Hessians and inputs, so every loss is the same; the FPN is reconstructed last
    (the authors' detection code's units), its five maps compared as one."""
    backbone, whole = (reconstructed[scope]["calibrator_info"] for scope in ("backbone", "all"))
    assert {f"model.backbone.{name}": value for name, value in backbone["mlp_loss"].items()} == whole["mlp_loss"]
    assert {f"model.backbone.{name}": value for name, value in backbone["block_loss"].items()} | {
        "model.neck": whole["block_loss"]["model.neck"]} == whole["block_loss"]
    assert list(whole["block_loss"])[-1] == "model.neck" and math.isfinite(whole["block_loss"]["model.neck"])
    assert reconstructed["all"]["quantizer"]["weight_quantized_layers"] > reconstructed["backbone"]["quantizer"][
        "weight_quantized_layers"]
