"""A tiny offline COCO instance (see :mod:`harness.data.mm.tiny`): Mask R-CNN with a one-block-per-stage Swin."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.api import TASKS, TaskSetup
from harness.api.data import mm_predictions, save_random_init, write_images

MODEL = "mask_rcnn_swin_t"
CLASSES = ("person", "bicycle", "car")
CONFIG = """_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
model = dict(
    backbone=dict(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], convert_weights=False, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=3),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32, num_classes=3)))
test_dataloader = dict(dataset=dict(metainfo=dict(classes={classes!r}), pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=({size}, {size}), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]))
"""


def write_tiny_coco(root: Path, num_images: int = 4, size: int = 64, seed: int = 0) -> TaskSetup:
    """COCO 2017 layout under ``root``, a random-init tiny Mask R-CNN, and its own predictions as ground truth."""
    names = [f"{index:012d}.jpg" for index in range(num_images)]
    write_images(root / "val2017", names, size, seed)
    write_images(root / "train2017", [f"train_{index}.jpg" for index in range(4)], size, seed + 1)
    config = root / "tiny_mask_rcnn.py"
    config.write_text(CONFIG.format(classes=CLASSES, size=size))
    save_random_init("mmdet", config, root / "tiny_mask_rcnn.pth", seed)
    images = [{"id": index, "file_name": name, "height": size, "width": size} for index, name in enumerate(names)]
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(CLASSES)]
    annotation_file = root / "annotations" / "instances_val2017.json"
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps({"images": images, "categories": categories, "annotations": []}))
    options = {"data_root": str(root), "checkpoint": str(root / "tiny_mask_rcnn.pth"), "config": str(config),
               "prior_size": 32, "num_workers": 0}
    task_class = TASKS.get("coco")  # by name: the task module imports this one
    task = task_class(task_class.Options(**options))
    model = task.load_model(MODEL)
    samples = [sample for _, outputs in mm_predictions(model, task.dataset(MODEL), 1, 0, "tiny coco") for sample in outputs]
    annotation_file.write_text(json.dumps({"images": images, "categories": categories,
                                           "annotations": _ground_truth(samples, num_images * 3)}))
    return TaskSetup(options=options, model_name=MODEL, limit=None)


def _ground_truth(samples: list, count: int) -> list[dict]:
    """The ``count`` highest-scoring FP detections (non-empty masks, a strict score gap below the last)."""
    from pycocotools import mask as mask_utils

    detections = sorted(((float(score), sample.metainfo["img_id"], box, int(label), mask)
                         for sample in samples
                         for score, box, label, mask in zip(*(sample.pred_instances[key] for key in
                                                              ("scores", "bboxes", "labels", "masks")))),
                        key=lambda detection: -detection[0])
    kept = []
    for index, (score, image_id, box, label, mask) in enumerate(detections[:count]):
        if not mask.any() or (index + 1 < len(detections) and detections[index + 1][0] == score):
            break
        rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
        x0, y0, x1, y1 = box.tolist()
        kept.append({"id": index + 1, "image_id": image_id, "category_id": label + 1, "iscrowd": 0,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(mask_utils.area(rle)),
                     "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return kept
