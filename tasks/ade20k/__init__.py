"""Task ``ade20k``: ADE20K val mIoU of mmseg's UperNet with Swin and ViT/DeiT backbones (README, Tasks).

Offline: weights from ``--checkpoint`` (or mmengine's download cache), data from ``--data-root``
in the ADEChallengeData2016 layout; the metric is mmseg's ``IoUMetric``. Configs are mmseg's own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.api import TASKS, OpenMMLabModel, OpenMMLabTask, TaskSetup
from tasks.ade20k.tiny import write_tiny_ade20k


@TASKS.register("ade20k")
class ADE20KTask(OpenMMLabTask):
    """Semantic segmentation of ``ROOT/images/validation`` against ``ROOT/annotations/validation``."""

    scope = "mmseg"
    metric_names = ("miou", "aacc")
    train_images = "images/training"
    layout_hint = ("ADEChallengeData2016: ROOT/images/validation/*.jpg and ROOT/annotations/validation/*.png "
                   "(ROOT/images/training/ for `real`)")
    models = {  # second: the timm ImageNet-1k classifier each backbone was pre-trained as (the class source)
        "upernet_swin_t": OpenMMLabModel(
            "mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
            "swin_tiny_patch4_window7_224.ms_in1k",
            "mmseg UperNet, Swin-T backbone (ImageNet-1k, 224 px), 512x512, 160k"),
        "upernet_swin_s": OpenMMLabModel(
            "mmseg::swin/swin-small-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
            "swin_small_patch4_window7_224.ms_in1k",
            "mmseg UperNet, Swin-S backbone (ImageNet-1k, 224 px), 512x512, 160k"),
        "upernet_deit_s": OpenMMLabModel(
            "mmseg::vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py", "deit_small_patch16_224.fb_in1k",
            "mmseg UperNet, DeiT-S/16 backbone (ImageNet-1k, 224 px), 512x512, 80k"),
        "upernet_deit_b": OpenMMLabModel(
            "mmseg::vit/vit_deit-b16_upernet_8xb2-80k_ade20k-512x512.py", "deit_base_patch16_224.fb_in1k",
            "mmseg UperNet, DeiT-B/16 backbone (ImageNet-1k, 224 px), 512x512, 80k"),
        "upernet_vit_b": OpenMMLabModel(
            "mmseg::vit/vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py",
            "vit_base_patch16_224.orig_in21k_ft_in1k",  # the ImageNet-21k model fine-tuned on 1k that mmseg converts
            "mmseg UperNet, ViT-B/16 backbone (ImageNet-21k, 224 px), multi-level neck, 512x512, 80k"),
    }

    @classmethod
    def tiny_instance(cls, workdir: Path) -> TaskSetup:
        return write_tiny_ade20k(workdir)

    def required_paths(self, root: Path, dataset_config: Any) -> dict[str, Path]:
        prefix = dataset_config.data_prefix
        return {"image folder": root / prefix["img_path"], "label-map folder": root / prefix["seg_map_path"]}

    def metric_config(self, root: Path, config: Any) -> dict[str, Any]:
        metric = config.test_evaluator.copy()
        metric.prefix = self.name  # IoUMetric has no default prefix, and logs a warning on every run without one
        return metric

    def harness_metrics(self, raw: dict[str, float]) -> dict[str, float]:
        return {"miou": float(raw[f"{self.name}/mIoU"]), "aacc": float(raw[f"{self.name}/aAcc"])}
