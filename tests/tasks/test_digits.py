import pytest
import torch

from harness.bits import parse_bits
from harness.calibrators import MinMaxCalibrator
from harness.method import CalibrationContext, CalibrationSet
from harness.quant.convert import QuantConfig, quantize_model
from tasks.digits import DigitsTask
from tasks.digits.data import load_splits, normalize


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
