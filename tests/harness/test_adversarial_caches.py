"""Every cache the harness reads back may be wrong (issue 31): a calibration set altered under an intact header,
with labels or images of the wrong count, shape or values, or with a tampered header, and a truncated ImageNet
evaluation cache entry. Each case, reproduced through the public entry points, ends in one named line on stderr,
the file rebuilt and rewritten, and records made as from a fresh cache; the report never fails on such a file."""
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from harness.entry.cli import main
from harness.run.grid import GridSpec
from harness.run.runner import GridRunner
from harness.store.calibration_cache import load_calibration, tensor_digest
from harness.store.records import ResultStore
from tiny_imagenet import IMAGENET_MODEL, tiny_imagenet

CELL = ["--methods", "noise", "--tasks", "digits", "--models", "digits_vit_seed0", "--seeds", "0", "--limit", "20",
        "--no-progress", "--no-report"]
Tensors = dict[str, torch.Tensor]
Header = dict[str, str]


def _run_bits(results: Path, bits: str) -> int:
    return main(["run", *CELL, "--bits", bits, "--results", str(results)])


def _calibration_file(results: Path) -> Path:
    (path,) = (results / "cache" / "generators" / "noise").glob("*.safetensors")
    return path


def _read(path: Path) -> tuple[Tensors, Header]:
    with safe_open(path, framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, dict(handle.metadata())


def _write(path: Path, tensors: Tensors, header: Header) -> None:
    save_file(tensors, path, metadata=header)


def _redigested(tensors: Tensors, header: Header) -> Header:
    """A careful forger's header: the digest recomputed over the altered tensors."""
    return {**header, "digest": tensor_digest(tensors)}


def _with_meta(**changes) -> Callable[[Tensors, Header], tuple[Tensors, Header]]:
    def tamper(tensors: Tensors, header: Header) -> tuple[Tensors, Header]:
        return tensors, {**header, "meta": json.dumps({**json.loads(header["meta"]), **changes})}
    return tamper


def _zeroed(tensors, header):
    return {**tensors, "images": torch.zeros_like(tensors["images"])}, header  # the header left intact


def _undigested(tensors, header):
    return tensors, {name: value for name, value in header.items() if name != "digest"}


def _five_labels(tensors, header):
    tensors = {**tensors, "labels": torch.arange(5)}
    return tensors, _redigested(tensors, header)


def _nan_image(tensors, header):
    images = tensors["images"].clone()
    images[3, 0, 2, 2] = float("nan")
    tensors = {**tensors, "images": images}
    return tensors, _redigested(tensors, header)


def _three_channels(tensors, header):
    tensors = {**tensors, "images": tensors["images"].expand(-1, 3, -1, -1).contiguous()}
    return tensors, _redigested(tensors, header)


CALIBRATION_CASES = {
    "zeroed images": (_zeroed, "its tensors differ from the digest in its header (altered images or labels)"),
    "no digest": (_undigested, "no digest of its tensors in its header (written before digests were stored)"),
    "5 labels for 32 images": (_five_labels, "labels torch.int64 of shape (5,), expected one integer label "
                                             "for each of the 32 images"),
    "a NaN pixel": (_nan_image, "images hold NaN or infinite values"),
    "3 channels for a 1-channel prior": (_three_channels, "images of shape (3, 16, 16), expected the prior's (1, 16, 16)"),
    "generate_seconds 'slow'": (_with_meta(generate_seconds="slow"),
                                "meta.generate_seconds is 'slow', expected a finite number"),
    "code a string": (_with_meta(code="x"), "meta.code is 'x', expected a mapping"),
    "code without the generator": (_with_meta(code={}), "meta.code.generator is missing, expected a mapping"),
    "model a number": (_with_meta(model=5), "meta.model is 5, expected a string"),
    "prior null": (_with_meta(prior=None), "meta.prior is null, expected a mapping"),
    "prior of 2 dimensions": (_with_meta(prior={"input_size": [16, 16], "mean": [0.5], "std": [0.5], "num_classes": 10}),
                              "meta.prior.input_size is [16, 16], expected [channels, height, width]"),
}


@pytest.mark.parametrize("tamper, problem", CALIBRATION_CASES.values(), ids=CALIBRATION_CASES)
def test_an_unusable_calibration_set_is_named_regenerated_and_rewritten(results, capsys, tamper, problem):
    path = _calibration_file(results)
    tensors, header = _read(path)
    _write(path, *tamper(tensors, header))
    capsys.readouterr()

    assert main(["report", "--results", str(results)]) == 0  # was: a traceback from the gallery
    assert list(ResultStore(results).calibration_entries()) == []  # the report's reader skips it
    assert _run_bits(results, "w8a8") == 0  # was: zeroed images used, or a traceback
    captured = capsys.readouterr()
    assert "1 cells computed, 0 already finished, 0 failed" in captured.out
    assert [line for line in captured.err.splitlines() if "calibration set" in line] == [
        f"warning: calibration set {path} is not usable ({problem}); regenerating it"]
    (record,) = [r for r in ResultStore(results).records() if r["bits"] == "w8a8"]
    assert record["status"] == "ok" and record["generator_cache_hit"] is False
    assert record["num_calibration_images"] == 32
    entry, again = load_calibration(path)  # rewritten: the seed's images, a current header
    assert again is None and torch.equal(entry.calibration.images, tensors["images"]) and entry.calibration.labels is None
    assert _read(path)[1]["digest"] == header["digest"]

    assert _run_bits(results, "w4a4") == 0  # the next run reads the rewritten set: no repeat
    captured = capsys.readouterr()
    assert "calibration set" not in captured.err
    (record,) = [r for r in ResultStore(results).records() if r["bits"] == "w4a4"]
    assert record["generator_cache_hit"] is True


def test_a_calibration_set_made_for_another_prior_is_not_used(results, capsys):
    """A header of the right types whose prior is not the task's: the images were made for other inputs."""
    path = _calibration_file(results)
    tensors, header = _read(path)
    prior = json.loads(header["meta"])["prior"]
    _write(path, *_with_meta(prior={**prior, "mean": [0.0]})(tensors, header))
    capsys.readouterr()

    assert _run_bits(results, "w8a8") == 0
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "calibration set" in line]
    assert line.startswith(f"warning: calibration set {path} is not usable (its header's prior ImagePrior(")
    assert "mean=(0.0,)" in line and line.endswith("; regenerating it")
    assert json.loads(_read(path)[1]["meta"])["prior"] == prior


def test_the_report_skips_a_set_whose_prior_cannot_denormalize_its_images(results, capsys):
    """Two means for one channel: the gallery's de-normalization would fail the whole report."""
    path = _calibration_file(results)
    tensors, header = _read(path)
    prior = json.loads(header["meta"])["prior"]
    _write(path, *_with_meta(prior={**prior, "mean": prior["mean"] * 2})(tensors, header))

    assert main(["report", "--results", str(results)]) == 0
    assert list(ResultStore(results).calibration_entries()) == []
    assert load_calibration(path)[1] == "meta.prior has 2 means and 1 stds for 1 channels"


# --- the ImageNet evaluation cache ---------------------------------------------------------------------

@pytest.fixture
def imagenet(tmp_path, monkeypatch) -> dict:
    """The tiny ImageNet folder's task options, with an evaluation cache of this test's own."""
    monkeypatch.setenv("DFQ_HARNESS_CACHE", str(tmp_path / "cache"))
    return tiny_imagenet(tmp_path / "imagenet").options


def _imagenet_fp_cell(results: Path, options: dict, force: bool = False) -> dict:
    """The FP cell of the tiny ImageNet: its evaluation reads the cache entry (``--force`` evaluates again)."""
    spec = GridSpec(methods=("noise",), tasks=("imagenet",), models=(IMAGENET_MODEL,), bits=("fp",), seeds=(0,),
                    task_options=options)
    (record,) = GridRunner(results, force=force).run(spec).records
    return record


@pytest.mark.parametrize("damage, problem", [
    (lambda data: data[:len(data) // 2], "images.npy unreadable (mmap length is greater than file size; truncated or replaced)"),
    (lambda data: data[:40], "images.npy unreadable ("),
])
def test_a_truncated_eval_cache_entry_is_rebuilt_once(tmp_path, imagenet, capsys, damage, problem):
    first = _imagenet_fp_cell(tmp_path / "results", imagenet)
    (images,) = (tmp_path / "cache" / "imagenet_eval").glob("*/images.npy")
    whole = images.read_bytes()
    images.write_bytes(damage(whole))
    capsys.readouterr()

    again = _imagenet_fp_cell(tmp_path / "results", imagenet, force=True)  # was: every cell failed
    lines = [line for line in capsys.readouterr().err.splitlines() if "eval cache" in line]
    assert len(lines) == 1 and lines[0].startswith(
        f"warning: eval cache entry {images.parent} is not usable ({problem}") and lines[0].endswith("; rebuilding it")
    assert again["status"] == "ok" and again["metrics"] == first["metrics"]
    assert images.read_bytes() == whole  # rebuilt as it was

    _imagenet_fp_cell(tmp_path / "results", imagenet, force=True)
    assert "eval cache" not in capsys.readouterr().err


def test_an_eval_cache_entry_with_labels_of_another_length_is_rebuilt(tmp_path, imagenet, capsys):
    first = _imagenet_fp_cell(tmp_path / "results", imagenet)
    (labels,) = (tmp_path / "cache" / "imagenet_eval").glob("*/labels.npy")
    np.save(labels, np.zeros(3, dtype=np.int64))
    capsys.readouterr()

    again = _imagenet_fp_cell(tmp_path / "results", imagenet, force=True)
    assert [line for line in capsys.readouterr().err.splitlines() if "eval cache" in line] == [
        f"warning: eval cache entry {labels.parent} is not usable (labels.npy holds int64 (3,), expected int64 (4,)); "
        "rebuilding it"]
    assert again["metrics"] == first["metrics"] and np.load(labels).shape == (4,)


def test_a_bad_cache_file_of_one_cell_is_never_fatal_to_the_other_cells(tmp_path, capsys):
    """Two seeds share the FP metric and each has its calibration set: with seed 0's set truncated and the
    FP metric out of range, both cells compute, seed 0's set is rebuilt, seed 1 reuses its own untouched."""
    two_seeds = [arg if arg != "0" else "0,1" for arg in CELL]
    assert main(["run", *two_seeds, "--bits", "w4a8", "--results", str(tmp_path)]) == 0
    first = {r["seed"]: r for r in map(json.loads, map(Path.read_text, (tmp_path / "records").glob("*.json")))}
    shutil.rmtree(tmp_path / "records")
    store = ResultStore(tmp_path)
    seed0 = next(entry.path for entry in store.calibration_entries() if entry.meta["seed"] == 0)
    seed0.write_bytes(seed0.read_bytes()[: seed0.stat().st_size // 2])
    (fp_file,) = (tmp_path / "fp").glob("*.json")
    fp_file.write_text(json.dumps({**json.loads(fp_file.read_text()), "metrics": {"top1": 1000}}))
    capsys.readouterr()

    assert main(["run", *two_seeds, "--bits", "w4a8", "--results", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count(f"calibration set {seed0} is not usable") == 1 and err.count("FP metric") == 1
    again = {r["seed"]: r for r in map(json.loads, map(Path.read_text, (tmp_path / "records").glob("*.json")))}
    assert {seed: r["status"] for seed, r in again.items()} == {0: "ok", 1: "ok"}
    assert (again[0]["generator_cache_hit"], again[1]["generator_cache_hit"]) == (False, True)
    for seed in (0, 1):  # the same computation as from a fresh cache: the same values
        assert again[seed]["metrics"] == first[seed]["metrics"] and again[seed]["fp_metrics"] == first[seed]["fp_metrics"]
