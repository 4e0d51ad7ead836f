"""reports/published.csv: published figures in the harness's names, one source each (docs/results.md)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from reports.published import CALIBRATION_ONLY, FINE_TUNED, load_published
from tasks.imagenet import ImageNetTask

HEADER = "task,model,method,bits,metric,protocol,value,source,verified,notes\n"
METHODS = {"adalog", "aphq_vit", "fima_q", "psaq", "psaq_v2", "ranking", "spdfq", "noise", "real", "ptq4vit", "repq_vit", "fp",
           "maskaq", "mimiq", "gdfq", "qimera", "adadfq"}  # the last five from MaskAQ's Table 1


def test_shipped_table_uses_harness_names():
    load_published()  # no duplicate keys, no unknown verified status or protocol, every bit spec parses
    with resources.files("reports").joinpath("published.csv").open() as handle:
        table = pd.read_csv(handle)
    assert len(table) == 288 and set(table["method"]) == METHODS
    assert set(table["task"]) == {"imagenet", "coco", "ade20k"}
    assert set(table.loc[table["task"] == "imagenet", "model"]) == set(ImageNetTask.model_names)
    assert set(table["bits"]) == {"fp", "w4a8", "w8a8", "w3a3", "w4a4", "w5a5", "w6a6", "mp6", "mp8"}


@pytest.mark.parametrize("key, value, verified, notes, protocol", [
    (("imagenet", "deit_tiny_patch16_224", "psaq", "w4a8", "top1"), 65.57, "verified", "min-max", CALIBRATION_ONLY),
    (("coco", "mask_rcnn_swin_s", "aphq_vit", "w4a4", "mask_ap"), 41.0, "verified", "RPN's perturbation Hessian",
     CALIBRATION_ONLY),
    (("imagenet", "swin_small_patch4_window7_224", "psaq_v2", "w8a8", "top1"), 82.13, "verified", "", FINE_TUNED),
    (("imagenet", "deit_base_patch16_224", "ranking", "mp8a8", "top1"),
     81.29, "verified", "mixed precision", CALIBRATION_ONLY),
    (("imagenet", "deit_small_patch16_224", "ranking", "mp6a6", "top1"),
     75.10, "recalled", "mixed precision", CALIBRATION_ONLY),
    (("imagenet", "vit_base_patch16_224", "spdfq", "w4a4", "top1"),
     51.84, "recalled", "shared reconstruction backend", CALIBRATION_ONLY),
    (("imagenet", "vit_base_patch16_224", "real", "w4a4", "top1"),
     68.16, "recalled", "shared reconstruction backend", CALIBRATION_ONLY),
    (("imagenet", "swin_base_patch4_window7_224", "ptq4vit", "w6a6", "top1"),
     84.01, "verified", "twin uniform", CALIBRATION_ONLY),
    (("imagenet", "swin_base_patch4_window7_224", "fp", "fp", "top1"), 85.27, "verified", "", CALIBRATION_ONLY),
    (("coco", "swin_small_patch4_window7_224", "psaq_v2", "w8a8", "mask_ap"),
     44.1, "verified", "Swin-S backbone", FINE_TUNED),
    (("imagenet", "deit_tiny_patch16_224", "repq_vit", "w4a4", "top1"),
     57.43, "verified", "32 images", CALIBRATION_ONLY),
    (("coco", "cascade_mask_rcnn_swin_s", "repq_vit", "w6a6", "mask_ap"),
     44.6, "verified", "51.9 / 45.0", CALIBRATION_ONLY),
])
def test_figures_read_back(key, value, verified, notes, protocol):
    # Recalled figures are kept out of lookup by default (docs/results.md), so read them with include_recalled.
    figure = load_published(include_recalled=True).lookup(*key, protocol=protocol)
    assert figure.value == value and figure.verified == verified and notes in figure.notes
    assert figure.protocol == protocol


def test_empty_value_means_no_figure(tmp_path: Path):
    path = tmp_path / "published.csv"
    path.write_text(HEADER + "imagenet,m,psaq,w8a8,top1,calibration only,,paper,verified,\n"
                           "imagenet,m,psaq,w4a4,top1,calibration only,0,paper,verified,\n")
    table = load_published(path)
    assert table.lookup("imagenet", "m", "psaq", "w8a8", "top1") is None
    assert table.lookup("imagenet", "m", "psaq", "w4a4", "top1").value == 0.0  # a published zero stays a zero


@pytest.mark.parametrize("rows, message", [
    ("imagenet,m,psaq,w8a8,top1,calibration only,1,a,verified,\n"
     "imagenet,m,psaq,W8A8,top1,calibration only,2,b,verified,\n", "listed twice"),
    ("imagenet,m,psaq,w8a8,top1,fine-tuned (200 epochs),1,a,verified,\n"
     "imagenet,m,psaq,w8a8,top1,fine-tuned (200  epochs),2,b,verified,\n", "protocol"),
    ("imagenet,m,psaq,w8a8,top1,calibration only,1,a,maybe,\n", "verified must be one of"),
])
def test_ambiguous_tables_are_refused(tmp_path: Path, rows, message):
    path = tmp_path / "published.csv"
    path.write_text(HEADER + rows)
    with pytest.raises(ValueError, match=message):
        load_published(path)
