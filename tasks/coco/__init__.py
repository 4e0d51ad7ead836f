"""Task ``coco``: COCO 2017 val box AP and mask AP of mmdet's (Cascade) Mask R-CNN with Swin backbones (README, Tasks).

Offline: weights from ``--checkpoint`` (or mmengine's download cache), data from ``--data-root``
in the standard layout; the metric is mmdet's ``CocoMetric``. Mask R-CNN uses mmdet's own Swin
configs; mmdet ships no Cascade Mask R-CNN with Swin, so ``configs/`` composes mmdet's Cascade
Mask R-CNN config with the Swin backbone of its Mask R-CNN config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.api import OBJECTIVE, TASKS, OpenMMLabModel, OpenMMLabTask, TaskSetup
from harness.api.quantizer import OutputObjective
from tasks.coco.objective import ProposalDivergence, backbone_proposals, inner_proposals
from tasks.coco.tiny import write_tiny_coco

CONFIGS = Path(__file__).parent / "configs"
SWIN_T, SWIN_S = "swin_tiny_patch4_window7_224.ms_in1k", "swin_small_patch4_window7_224.ms_in1k"


@TASKS.register("coco")
class CocoTask(OpenMMLabTask):
    """Instance segmentation on ``ROOT/val2017`` against ``ROOT/annotations/instances_val2017.json``."""

    scope = "mmdet"
    metric_names = ("box_ap", "mask_ap")
    train_images = "train2017"
    layout_hint = "COCO 2017: ROOT/annotations/instances_val2017.json and ROOT/val2017/*.jpg"
    offers = {**OpenMMLabTask.offers, OBJECTIVE: None}  # the region proposals (tasks.coco.objective)
    models = {  # the backbones start from Microsoft's ImageNet-1k Swin releases, timm's .ms_in1k weights
        "mask_rcnn_swin_t": OpenMMLabModel("mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py", SWIN_T,
                                           "mmdet Mask R-CNN, Swin-T backbone (ImageNet-1k, 224 px), FPN, 1x"),
        "mask_rcnn_swin_s": OpenMMLabModel("mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py", SWIN_S,
                                           "mmdet Mask R-CNN, Swin-S backbone (ImageNet-1k, 224 px), FPN, 3x"),
        "cascade_mask_rcnn_swin_t": OpenMMLabModel(str(CONFIGS / "cascade-mask-rcnn_swin-t-p4-w7_fpn_coco.py"), SWIN_T,
                                                   "mmdet Cascade Mask R-CNN, Swin-T backbone, FPN (--checkpoint)"),
        "cascade_mask_rcnn_swin_s": OpenMMLabModel(str(CONFIGS / "cascade-mask-rcnn_swin-s-p4-w7_fpn_coco.py"), SWIN_S,
                                                   "mmdet Cascade Mask R-CNN, Swin-S backbone, FPN (--checkpoint)"),
    }

    @classmethod
    def tiny_instance(cls, workdir: Path) -> TaskSetup:
        return write_tiny_coco(workdir)

    def required_paths(self, root: Path, dataset_config: Any) -> dict[str, Path]:
        return {"annotation file": root / dataset_config.ann_file,
                "image folder": root / dataset_config.data_prefix["img"]}

    def metric_config(self, root: Path, config: Any) -> dict[str, Any]:
        metric = config.test_evaluator.copy()
        metric.ann_file = str(root / config.test_dataloader.dataset.ann_file)
        return metric

    def harness_metrics(self, raw: dict[str, float]) -> dict[str, float]:
        return {"box_ap": 100 * raw["coco/bbox_mAP"], "mask_ap": 100 * raw["coco/segm_mAP"]}

    def output_objective(self, fp_model: nn.Module, temperature: float) -> OutputObjective:
        """The RPN's objectness and boxes, as APHQ-ViT's detection code compares them (docs/methods.md, APHQ-ViT,
        Detection); ``temperature`` is a classifier's and plays no part."""
        return ProposalDivergence(backbone_proposals(fp_model) if self.options.quantize == "backbone" else inner_proposals)

    def tensor_samples(self, images: torch.Tensor) -> list:
        """Two-stage heads read each image's shape from its data sample."""
        from mmdet.structures import DetDataSample

        shape = tuple(images.shape[-2:])
        return [DetDataSample(metainfo={"img_shape": shape, "ori_shape": shape, "batch_input_shape": shape,
                                        "scale_factor": (1.0, 1.0)}) for _ in range(images.shape[0])]
