"""A tiny offline ADE20K instance (see :mod:`harness.data.mm.tiny`): UperNet with a one-block-per-stage Swin or a 2-layer ViT."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from harness.api import TASKS, TaskSetup
from harness.api.data import mm_predictions, save_random_init, write_images

PIPELINE = """test_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=({size}, {size}), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')]))
"""
CONFIGS = {
    "upernet_swin_t": """_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
model = dict(
    backbone=dict(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8]),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=32),
    auxiliary_head=dict(in_channels=128, channels=16))
""",
    "upernet_deit_s": """_base_ = 'mmseg::vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py'
model = dict(
    pretrained=None,
    backbone=dict(img_size=(64, 64), patch_size=8, embed_dims=32, num_layers=4, num_heads=2, out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[32, 32, 32, 32], channels=32),
    auxiliary_head=dict(in_channels=32, channels=16))
""",
}


def write_tiny_ade20k(root: Path, model_name: str = "upernet_swin_t", num_images: int = 3, size: int = 64,
                      seed: int = 0) -> TaskSetup:
    """ADEChallengeData2016 layout under ``root``, a random-init tiny UperNet, its own predictions as labels."""
    names = [f"ADE_val_{index:08d}" for index in range(num_images)]
    write_images(root / "images" / "validation", [f"{name}.jpg" for name in names], size, seed)
    write_images(root / "images" / "training", [f"ADE_train_{index:08d}.jpg" for index in range(4)], size, seed + 1)
    labels = root / "annotations" / "validation"
    labels.mkdir(parents=True, exist_ok=True)
    for name in names:  # placeholders: the dataset needs a label map per image before the model has predicted
        Image.fromarray(np.zeros((size, size), np.uint8)).save(labels / f"{name}.png")
    config = root / f"tiny_{model_name}.py"
    config.write_text(CONFIGS[model_name] + PIPELINE.format(size=size))
    checkpoint = root / f"tiny_{model_name}.pth"
    save_random_init("mmseg", config, checkpoint, seed)
    options = {"data_root": str(root), "checkpoint": str(checkpoint), "config": str(config), "prior_size": 32,
               "num_workers": 0}
    task_class = TASKS.get("ade20k")  # by name: the task module imports this one
    task = task_class(task_class.Options(**options))
    model = task.load_model(model_name)
    for _, outputs in mm_predictions(model, task.dataset(model_name), 1, 0, "tiny ade20k"):
        for sample in outputs:  # reduce_zero_label: file value k is class k - 1
            label_map = sample.pred_sem_seg.data[0].numpy().astype(np.uint8) + 1
            Image.fromarray(label_map).save(labels / f"{Path(sample.img_path).stem}.png")
    return TaskSetup(options=options, model_name=model_name, limit=None)
