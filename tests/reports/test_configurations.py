"""A leaderboard row is one configuration: only seeds of the same configuration are averaged."""
import json

import pytest

from harness.entry.cli import main
from reports.aggregate import records_frame, seed_stats

CELL = ["--methods", "noise", "--tasks", "digits", "--models", "digits_vit_seed0", "--seeds", "0", "--limit", "20",
        "--bits", "w4a8", "--no-progress", "--no-report"]


def _records(out):
    return [json.loads(path.read_text()) for path in sorted(out.glob("records/*.json"))]


def test_quantizer_settings_are_rows_of_their_own(tmp_path):
    for extra in ([], ["--keep-first-last-fp"], ["--attn-quantizer", "log2"], ["--profile", "psaq"]):
        assert main(["run", *CELL, *extra, "--results", str(tmp_path)]) == 0
    stats = seed_stats(records_frame(_records(tmp_path)), "metric.top1")
    assert sorted(stats["label"]) == ["noise", "noise [attn_quantizer=log2]", "noise [keep_first_last_fp=True]",
                                      "noise [psaq]"]
    assert list(stats["seeds"]) == [1, 1, 1, 1]


def test_other_weights_for_one_model_are_not_averaged(tmp_path):
    from tasks.digits.shipped import shipped_weights

    assert main(["run", *CELL, "--results", str(tmp_path)]) == 0
    assert main(["run", *CELL, "--checkpoint", str(shipped_weights("digits_vit_seed1")[0]), "--results", str(tmp_path)]) == 0
    records = _records(tmp_path)
    stats = seed_stats(records_frame(records), "metric.top1")
    assert len(stats) == 2 and list(stats["seeds"]) == [1, 1]
    for record in records:
        label = next(label for label in stats["label"] if f"weights {record['weights_id'][:8]}" in label)
        assert stats.set_index("label").loc[label, "mean"] == pytest.approx(record["metrics"]["top1"])


def test_a_limit_beyond_the_dataset_is_all_images(tmp_path, capsys):
    unlimited = [arg for arg in CELL if arg not in ("--limit", "20")]
    assert main(["run", *unlimited, "--results", str(tmp_path)]) == 0
    assert main(["run", *unlimited, "--limit", "100000", "--results", str(tmp_path)]) == 0
    assert "0 cells computed, 1 already finished" in capsys.readouterr().out
    (record,) = _records(tmp_path)
    assert record["options"]["limit"] is None
    assert set(records_frame([record])["subset"]) == {"all images"}


def test_seeds_of_one_configuration_share_a_row(tmp_path):
    assert main(["run", *CELL, "--seeds", "0,1,1,0", "--results", str(tmp_path)]) == 0
    stats = seed_stats(records_frame(_records(tmp_path)), "metric.top1")
    assert list(stats["label"]) == ["noise"] and list(stats["seeds"]) == [2]


def test_records_of_another_task_option_value_are_told_apart():
    """Hand-built records whose only difference is a task option outside the label still get two rows."""
    base = {"schema": 2, "status": "ok", "method": "noise", "generator": "noise", "calibrator": "minmax",
            "task": "coco", "model": "m", "bits": "w4a8", "seed": 0, "label": "noise", "weights_id": "w" * 16,
            "metrics": {"box_ap": 30.0}, "fp_metrics": {"box_ap": 40.0}, "code": {},
            "options": {"task": {"quantize": "backbone"}, "limit": None}}
    other = {**base, "cell_id": "b", "metrics": {"box_ap": 10.0},
             "options": {"task": {"quantize": "all"}, "limit": None}}
    stats = seed_stats(records_frame([{**base, "cell_id": "a"}, other]), "metric.box_ap")
    assert sorted(stats["mean"]) == [10.0, 30.0] and all("config" in label for label in stats["label"])
