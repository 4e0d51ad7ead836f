"""The fine-tuning stage (harness.plugin.tuner; docs/methods.md, Fine-tuning; docs/results.md, Protocols): identity,
records, labels, the calibration-set cache, fresh images for tuners, and the report's protocol and gain."""
import json
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.plugin.registry import TUNERS
from harness.plugin.tuner import Tuner, TuningContext
from harness.run.grid import GridSpec, expand
from harness.run.runner import GridRunner
from harness.store.keys import record_configuration
from harness.store.records import ResultStore
from reports.content import build_report

SMOKE = {"epochs": 3, "warmup_epochs": 1}
ONE_MODEL = dict(tasks=("digits",), models=("digits_vit_seed0",), limit=60)


def test_calibration_only_cells_keep_the_identity_they_had_before_tuners():
    plain, = expand(GridSpec(methods=("psaq",), bits=("w4a4",), **ONE_MODEL))
    explicit, tuned = expand(GridSpec(methods=("psaq",), bits=("w4a4",), tune=("none", "lsq_kd"), **ONE_MODEL))
    assert plain.tuner is None and explicit.tuner is None and tuned.tuner == "lsq_kd"
    assert explicit.keys("w").cell_id == plain.keys("w").cell_id
    assert "tuner" not in plain.keys("w").identity and "tuner" not in plain.keys("w").identity["options"]
    assert set(plain.code()) == {"task", "generator", "calibrator", "quantizer"}
    assert tuned.keys("w").identity["tuner"] == "lsq_kd" and "epochs" in tuned.keys("w").identity["options"]["tuner"]
    assert "tuner" in tuned.code() and tuned.keys("w").cell_id != plain.keys("w").cell_id
    configurations = {record_configuration({**cell.config(), "weights_id": "w", "code": cell.code()})
                      for cell in (plain, tuned)}
    assert len(configurations) == 2  # never seeds of one leaderboard entry


def test_fp_cells_are_never_tuned():
    cells = expand(GridSpec(methods=("real",), bits=("fp", "w4a4"), tune=("lsq_kd",), **ONE_MODEL))
    assert {(str(cell.bits), cell.tuner) for cell in cells} == {("fp", None), ("w4a4", "lsq_kd")}


@pytest.mark.parametrize("spec, message", [
    (dict(tune=("lsq_kdd",)), "unknown tuner 'lsq_kdd' (did you mean 'lsq_kd'?)"),
    (dict(tuner_options={"epochs": 2}), "--tune-opt epochs: no cell of this grid is fine-tuned"),
    (dict(tune=("lsq_kd",), tuner_options={"lsq_kd.epochs": 0}), "tuner 'lsq_kd' option epochs=0"),
    (dict(tune=("lsq_kd",), tuner_options={"lsq_kd.epoch": 2}), "tuner 'lsq_kd' has no option 'epoch'"),
    (dict(tune=("lsq_kd",), tuner_options={"other.epochs": 2}), "--tune-opt other.epochs: unknown tuner 'other'"),
])
def test_bad_tuning_settings_are_one_line_before_the_grid(spec, message):
    with pytest.raises(HarnessError) as error:
        expand(GridSpec(methods=("noise",), bits=("w4a4",), **ONE_MODEL, **spec))
    assert message in str(error.value) and "\n" not in str(error.value)


def _records(out: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((out / "records").glob("*.json"))]


def test_tuned_and_calibrated_cells_share_one_calibration_set_and_are_separate_rows(tmp_path):
    spec = GridSpec(methods=("noise",), bits=("w4a3",), seeds=(0, 1), tune=("none", "lsq_kd"),
                    tuner_options=SMOKE, **ONE_MODEL)
    summary = GridRunner(tmp_path).run(spec)
    assert (summary.computed, summary.failed) == (4, 0)
    records = _records(tmp_path)
    tuned = [r for r in records if r.get("tuner")]
    plain = [r for r in records if not r.get("tuner")]
    assert len(tuned) == len(plain) == 2
    for record in tuned:
        assert record["label"] == "noise → lsq_kd {epochs=3, warmup_epochs=1}"
        assert record["options"]["tuner"]["epochs"] == 3 and "tune" in record["timing_s"]
        assert record["tuner_info"]["steps"] == 2 * 2  # 2 stepping epochs x 32 images in batches of 16
        assert record["tuner_info"]["discrepancy_after"] != record["tuner_info"]["discrepancy_before"]
    # one calibration set per seed, made once and reused by the tuned cell of that seed
    assert len(list(ResultStore(tmp_path).calibration_entries())) == 2
    assert sorted(r["generator_cache_hit"] for r in records) == [False, False, True, True]

    board = build_report(records, tmp_path).tasks[0].sections[0].leaderboards[0]
    rows = {row.label: row for row in board.rows}
    assert rows["noise"].protocol == "calibration only"
    assert rows["noise → lsq_kd {epochs=3, warmup_epochs=1}"].protocol == "fine-tuned: lsq_kd"
    gain, = board.gains
    assert (gain.label, gain.base) == ("noise → lsq_kd {epochs=3, warmup_epochs=1}", "noise")
    by_seed = {(bool(r.get("tuner")), r["seed"]): r["metrics"]["top1"] for r in records}
    expected = sum(by_seed[True, seed] - by_seed[False, seed] for seed in (0, 1)) / 2
    assert gain.cells[0].paired and gain.cells[0].difference == pytest.approx(expected)


class _FreshImages(Tuner):
    """Asks for fresh images twice and records what it got: a tuner that takes turns with synthesis."""

    seen: list = []

    def tune(self, qmodel, context: TuningContext):
        first, second = context.synthesize(qmodel, 1), context.synthesize(qmodel, 2)
        _FreshImages.seen = [context.calibration.images, first.images, second.images]
        with torch.no_grad():  # a visible change, so the record is a tuned model's
            next(iter(qmodel.parameters())).mul_(1.0)
        return {"rounds": 2}


def test_a_tuner_gets_fresh_images_per_round_that_never_enter_the_cache(tmp_path, monkeypatch):
    monkeypatch.setitem(TUNERS._entries, "fresh_images", _FreshImages)
    spec = GridSpec(methods=("noise",), bits=("w4a4",), tune=("fresh_images",), **ONE_MODEL)
    summary = GridRunner(tmp_path).run(spec)
    assert summary.failed == 0, summary.records[0].get("error")
    calibration, first, second = _FreshImages.seen
    assert first.shape == second.shape == calibration.shape
    assert not torch.equal(first, calibration) and not torch.equal(second, first)
    assert len(list(ResultStore(tmp_path).calibration_entries())) == 1  # the set made before tuning only
    assert _records(tmp_path)[0]["tuner_info"] == {"rounds": 2}
