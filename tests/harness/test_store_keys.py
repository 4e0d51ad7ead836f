"""Every store key comes from one resolution of a cell (harness/store/keys.py) and keeps its value across
refactors: a key that moves would make every user's records and cached sets look unfinished."""
from __future__ import annotations

import pytest

from harness.plugin.task import ImagePrior
from harness.run.grid import Cell, GridSpec, expand
from harness.run.runner import GridRunner
from harness.store.keys import record_configuration
from harness.store.records import ResultStore

DIGITS_PRIOR = ImagePrior(input_size=(1, 16, 16), mean=(0.5,), std=(0.5,), num_classes=10)


def _cell(bits: str) -> Cell:
    return expand(GridSpec(methods=("noise",), tasks=("digits",), models=("digits_vit_seed0",), bits=(bits,)))[0]


# Made by the code before the keys moved into harness/store/keys.py (commit 29d07be: Cell.identity,
# worker.calibration_key, worker.fp_metric_path, grid.record_configuration), weights id "w". They change only
# with a component's version (then a stored result is rightly recomputed), never with a refactor.
@pytest.mark.parametrize("bits, cell_id, calibration, borrowed, configuration", [
    ("w4a4", "96443576ea7b0591", "f7d90a2d4d9f4d56", "f92c0e11e7898fff", "25898dfb5396f866"),
    ("fp", "70070a91f1e01670", None, None, "169b496571a0a652"),
])
def test_keys_keep_the_values_stored_results_are_filed_under(tmp_path, bits, cell_id, calibration, borrowed,
                                                             configuration):
    cell = _cell(bits)
    keys = cell.keys("w")
    assert keys.cell_id == cell_id
    assert ResultStore(tmp_path).fp_metric_path(keys) == tmp_path / "fp" / "digits-digits_vit_seed0-w-febcf7ad-None-v1.json"
    if calibration is not None:
        assert keys.calibration_key(DIGITS_PRIOR) == calibration
        assert keys.calibration_key(DIGITS_PRIOR, "imagenet") == borrowed
    assert record_configuration({**cell.config(), "weights_id": "w", "code": cell.code()}) == configuration


def test_execution_only_task_options_stay_out_of_every_key_but_the_fp_metrics(tmp_path):
    """A data root or batch size moves no cell id or calibration key; the FP metric name holds the task options."""
    plain, moved = _cell("w4a4"), _cell("w4a4")
    moved.task_options = type(plain.task_options)(batch_size=7, data_root="/elsewhere")
    a, b = plain.keys("w"), moved.keys("w")
    assert a.cell_id == b.cell_id and a.calibration_key(DIGITS_PRIOR) == b.calibration_key(DIGITS_PRIOR)
    assert b.config["options"]["task"]["batch_size"] == 7  # the record still says how it was run
    assert a.fp_metric_name != b.fp_metric_name


def test_a_settled_cell_is_resolved_once(tmp_path, monkeypatch):
    """Record, FP metric, calibration cache and lock all read one resolution: config and code are asked once."""
    cell = expand(GridSpec(methods=("noise",), tasks=("digits",), models=("digits_vit_seed0",), bits=("w8a8",),
                           limit=32))[0]
    calls = {"config": 0, "code": 0}
    for name in calls:
        original = getattr(Cell, name)

        def counted(self, _original=original, _name=name):
            calls[_name] += 1
            return _original(self)
        monkeypatch.setattr(Cell, name, counted)
    record, computed = GridRunner(tmp_path).worker.settle(cell)
    assert computed and record["status"] == "ok", record.get("error")
    assert calls == {"config": 1, "code": 1}
    assert record["cell_id"] == cell.keys(record["weights_id"]).cell_id
