import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.plugin.calibrators import MinMaxCalibrator
from harness.plugin.method import CalibrationContext, CalibrationSet
from harness.quant.bits import parse_bits
from harness.quant.convert import QuantConfig, quantize_model
from tasks.digits import DigitsTask, shipped
from tasks.digits.data import load_splits, normalize
from tasks.digits.shipped import read_manifest
from tasks.digits.train import distance

REPO = Path(__file__).resolve().parents[2]


def test_split_is_stratified_70_30_and_upsampled():
    train, test = load_splits()
    assert len(train.labels) == 1257 and len(test.labels) == 540
    assert train.pixels.shape[1:] == (1, 16, 16) and 0 <= train.pixels.min() and train.pixels.max() <= 1
    train_share = torch.bincount(train.labels, minlength=10) / len(train.labels)
    test_share = torch.bincount(test.labels, minlength=10) / len(test.labels)
    assert (train_share - test_share).abs().max() < 0.01


def test_real_calibration_images_come_from_the_train_split_only():
    task = DigitsTask()
    images = task.calibration_images("digits_vit_seed0", 32, seed=3)
    train, test = load_splits()
    train_set = {tuple(row.tolist()) for row in normalize(train.pixels).flatten(1)}
    test_set = {tuple(row.tolist()) for row in normalize(test.pixels).flatten(1)} - train_set
    rows = {tuple(row.tolist()) for row in images.flatten(1)}
    assert len(rows) == 32 and rows <= train_set and not rows & test_set
    assert torch.equal(images, task.calibration_images("digits_vit_seed0", 32, seed=3))
    assert not torch.equal(images, task.calibration_images("digits_vit_seed0", 32, seed=4))


def test_trained_models_are_accurate_and_w8a8_stays_within_one_point():
    task = DigitsTask()
    for model_name in task.model_names:
        model = task.load_model(model_name)
        fp = task.evaluate(model, model_name)["top1"]
        assert fp > 95.0, (model_name, fp)
        qmodel = quantize_model(model, parse_bits("w8a8"), QuantConfig())
        MinMaxCalibrator().calibrate(qmodel, CalibrationContext(
            fp_model=model, calibration=CalibrationSet(task.calibration_images(model_name, 32, 0)),
            bits=parse_bits("w8a8"), seed=0, device=torch.device("cpu")))
        assert abs(task.evaluate(qmodel, model_name)["top1"] - fp) <= 1.0


def test_evaluate_is_batch_size_invariant_and_limit_counts_images():
    small, large = DigitsTask(DigitsTask.Options(batch_size=7)), DigitsTask(DigitsTask.Options(batch_size=500))
    model = small.load_model("digits_vit_seed1")
    assert small.evaluate(model, "digits_vit_seed1") == large.evaluate(model, "digits_vit_seed1")
    test = load_splits()[1]
    with torch.no_grad():
        first = model(normalize(test.pixels[:10])).argmax(1)
    expected = 100.0 * int((first == test.labels[:10]).sum()) / 10
    assert small.evaluate(model, "digits_vit_seed1", limit=10)["top1"] == pytest.approx(expected, abs=1e-9)


def test_the_task_loads_the_shipped_weights_and_trains_nothing():
    program = ("import sys; from harness.plugin.registry import TASKS; task = TASKS.get('digits')(); "
               "[task.load_model(m) for m in task.model_names]; print(sorted(m for m in sys.modules if 'train' in m))")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=True)
    assert "tasks.digits.train" not in result.stdout
    manifest = read_manifest()
    for model_name in DigitsTask.model_names:
        assert DigitsTask().weights_id(model_name) == manifest[model_name]["sha256"][:16]


def test_a_shipped_file_that_is_not_the_manifests_is_refused(tmp_path, monkeypatch):
    for path in shipped.WEIGHTS_DIR.iterdir():
        shutil.copy(path, tmp_path / path.name)
    damaged = tmp_path / read_manifest()["digits_vit_seed0"]["file"]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 1
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(HarnessError, match="have sha256 .* the manifest says .*python -m tasks.digits.train --ship"):
        DigitsTask().load_model("digits_vit_seed0")
    assert DigitsTask().load_model("digits_vit_seed1") is not None


def test_retraining_reports_its_distance_from_the_shipped_model():
    shipped_model = DigitsTask().load_model("digits_vit_seed0")
    assert distance(shipped_model, shipped_model) == {"max_abs_weight_difference": 0.0,
                                                      "test_argmax_agreement_percent": 100.0}
    moved = copy.deepcopy(shipped_model)
    with torch.no_grad():
        moved.head.bias[3] += 50.0  # every test image is now called a 3
    gap = distance(moved, shipped_model)
    assert gap["max_abs_weight_difference"] == pytest.approx(50.0)
    assert gap["test_argmax_agreement_percent"] == pytest.approx(100.0 * 54 / 540, abs=3)
