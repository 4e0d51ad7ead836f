"""Issue 31, the environment: full disks, read-only folders, paths that are folders or under files, a cache
variable pointing nowhere, pickles planted for an executor, broken checkpoints and broken plugins. Each
ends as one line ``error: ...`` and exit 2, before the grid where it can be known, never an internal error."""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import harness.store.io
from harness.entry.cli import main

CELL = ["--methods", "noise", "--tasks", "digits", "--models", "digits_vit_seed0", "--seeds", "0", "--limit", "20",
        "--bits", "fp", "--no-progress", "--no-report"]
ACCEPTED = {errno.EROFS: "a folder on a writable file system", errno.EACCES: "a path this user may read and write",
            errno.ENOSPC: "free space on that file system, or point the harness at a folder on another one",
            errno.ENOTDIR: "a path whose every parent is a folder, not a file"}


def _one_error(capsys) -> str:
    """The single stderr line of a refused command, without its ``error: `` prefix."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    return err.removeprefix("error: ").rstrip("\n")


def _refuse_writes(monkeypatch, folder: Path, code: int) -> None:
    """Creating anything under ``folder`` fails with ``code`` (root ignores chmod, so the call is refused)."""
    real_open, real_mkdir = os.open, os.mkdir
    inside = lambda path: Path(path).resolve() == folder.resolve() or folder.resolve() in Path(path).resolve().parents

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and inside(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path) and not os.path.exists(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A results folder holding one finished FP cell of digits."""
    results = tmp_path_factory.mktemp("finished")
    assert main(["run", *CELL, "--results", str(results)]) == 0
    return results


@pytest.fixture
def results(finished, tmp_path) -> Path:
    copy = tmp_path / "results"
    shutil.copytree(finished, copy)
    return copy


# --- OS errors: one line naming the path and what is accepted, exit 2 ---

def test_a_full_disk_on_the_lock_file_is_one_line(tmp_path, monkeypatch, capsys):
    def full(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(harness.store.io, "open", full, raising=False)  # file_lock opens its lock file with open()
    assert main(["run", *CELL, "--results", str(tmp_path)]) == 2
    line = _one_error(capsys)
    assert re.fullmatch(rf"{re.escape(str(tmp_path / 'locks'))}/\S+\.lock: No space left on device; accepted: "
                        rf"{re.escape(ACCEPTED[errno.ENOSPC])}", line), line


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_results_folder_refuses_run_before_the_grid(code, tmp_path, monkeypatch, capsys):
    _refuse_writes(monkeypatch, tmp_path, code)
    assert main(["run", *CELL, "--results", str(tmp_path)]) == 2
    line = _one_error(capsys)
    assert line == (f"results folder {tmp_path} is not usable ({os.strerror(code)}: {tmp_path / 'records'}); "
                    "pass --results DIR, a writable folder")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_results_folder_refuses_report(code, results, monkeypatch, capsys):
    _refuse_writes(monkeypatch, results, code)
    assert main(["report", "--results", str(results)]) == 2
    line = _one_error(capsys)
    assert re.fullmatch(rf"report folder {re.escape(str(results / 'report'))}: {os.strerror(code)} "
                        rf"\({re.escape(str(results.resolve()))}/\.probe\.\S+\); accepted: {re.escape(ACCEPTED[code])}",
                        line), line
    assert not (results / "report").exists()


def test_a_report_folder_under_a_file_is_one_line(results, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "file" / "report")]) == 2
    assert _one_error(capsys) == (f"report folder {tmp_path / 'file' / 'report'}: Not a directory; "
                                  f"accepted: {ACCEPTED[errno.ENOTDIR]}")


def test_a_report_folder_that_is_a_file_is_one_line(results, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "file")]) == 2
    assert _one_error(capsys) == (f"report folder {tmp_path / 'file'} is a file; "
                                  "name a folder (new, or an earlier report's)")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_export_folder_is_refused_before_recalibrating(code, results, tmp_path, monkeypatch, capsys):
    cell_id = next(results.glob("records/*.json")).stem
    folder = tmp_path / "exports"
    folder.mkdir()
    _refuse_writes(monkeypatch, folder, code)
    assert main(["export", "--cell", cell_id, "--results", str(results), str(folder / "model.onnx")]) == 2
    line = _one_error(capsys)
    assert re.fullmatch(rf"output path {re.escape(str(folder / 'model.onnx'))}: {os.strerror(code)} "
                        rf"\({re.escape(str(folder))}/\.probe\.\S+\); accepted: {re.escape(ACCEPTED[code])}", line), line


def test_an_export_path_that_is_a_folder_or_under_a_file_is_one_line(results, tmp_path, capsys):
    cell_id = next(results.glob("records/*.json")).stem
    (tmp_path / "file").write_text("x")
    assert main(["export", "--cell", cell_id, "--results", str(results), str(tmp_path)]) == 2
    assert _one_error(capsys) == (f"output path {tmp_path} is a directory; name the ONNX file to write, "
                                  f"e.g. {tmp_path / 'model.onnx'}")
    assert main(["export", "--cell", cell_id, "--results", str(results), str(tmp_path / "file" / "m.onnx")]) == 2
    assert _one_error(capsys) == (f"output path {tmp_path / 'file' / 'm.onnx'} is under {tmp_path / 'file'}, "
                                  "which is a file; name a file in a folder")


def test_a_results_folder_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["run", *CELL, "--results", str(tmp_path / "file" / "results")]) == 2
    assert _one_error(capsys) == (f"results folder {tmp_path / 'file' / 'results'} is not usable (Not a directory: "
                                  f"{tmp_path / 'file' / 'results' / 'records'}); pass --results DIR, a writable folder")


def test_a_cache_variable_under_a_file_is_refused_before_the_grid(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    cache = tmp_path / "file" / "cache"
    monkeypatch.setenv("DFQ_HARNESS_CACHE", str(cache))
    assert main(["run", *CELL, "--results", str(tmp_path / "results")]) == 2
    assert _one_error(capsys) == f"DFQ_HARNESS_CACHE {cache}: Not a directory; accepted: {ACCEPTED[errno.ENOTDIR]}"
    assert not list(tmp_path.glob("results/records/*.json"))


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_an_unwritable_or_uncreatable_cache_is_refused_before_the_grid(code, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "mount" / "cache"
    monkeypatch.setenv("DFQ_HARNESS_CACHE", str(cache))
    _refuse_writes(monkeypatch, tmp_path / "mount", code)
    assert main(["run", *CELL, "--results", str(tmp_path / "results")]) == 2
    assert _one_error(capsys) == f"DFQ_HARNESS_CACHE {cache}: {os.strerror(code)}; accepted: {ACCEPTED[code]}"
    assert not list(tmp_path.glob("results/records/*.json"))


# --- submitit: nothing in the results folder is unpickled ---

class _Marker:
    """Unpickling this creates a file: the proof that a planted pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_submitit_never_unpickles_from_the_results_folder(tmp_path):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[cluster]')")
    results, marker = tmp_path / "results", tmp_path / "planted_pickle_ran"
    planted = results / "submitit"
    planted.mkdir(parents=True)
    payload = pickle.dumps(_Marker(marker))
    names = [f"{job}_{part}.pkl" for job in (*range(os.getpid() - 5, os.getpid() + 200), "%j") for part in
             ("submitted", "result")]
    for name in names:
        (planted / name).write_bytes(payload)
    assert main(["run", *CELL, "--executor", "submitit-local", "--results", str(results)]) == 0
    assert not marker.exists()
    assert sorted(path.name for path in planted.iterdir()) == sorted(names)  # submitit writes nothing here
    assert len(list(results.glob("records/*.json"))) == 1


# --- checkpoints: empty, truncated, misfitting, non-finite: one line before the grid ---

def _digits_weights(tmp_path: Path) -> dict[str, torch.Tensor]:
    from tasks.digits.shipped import shipped_weights

    return load_file(shipped_weights("digits_vit_seed0")[0])


def _refused_checkpoint(path: Path, capsys, results: Path, task: list[str] | None = None) -> str:
    assert main(["run", *(task or CELL), "--checkpoint", str(path), "--results", str(results)]) == 2
    assert not list(results.glob("records/*.json")) and not list(results.glob("fp/*.json"))
    return _one_error(capsys)


def test_a_checkpoint_with_non_finite_weights_is_refused_before_the_grid(tmp_path, capsys):
    weights = _digits_weights(tmp_path)
    first, second = [name for name, tensor in weights.items() if tensor.is_floating_point()][:2]
    weights[first].view(-1)[:2] = float("nan")
    weights[second].view(-1)[0] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_file(weights, path)
    assert _refused_checkpoint(path, capsys, tmp_path / "r") == (
        f"checkpoint {path}: 3 non-finite values in {first}, {second}; accepted: weights that are all finite numbers "
        "(a file saved from a trained model)")


@pytest.mark.parametrize("content, reason", [
    (b"", "is empty (0 bytes)"),
    ("truncated", "is unreadable (RuntimeError: PytorchStreamReader failed reading zip archive: failed finding "
                  "central directory)"),
])
def test_an_empty_or_truncated_checkpoint_is_one_line(content, reason, tmp_path, capsys):
    path = tmp_path / "weights.pth"
    if content == "truncated":
        torch.save(_digits_weights(tmp_path), path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    assert _refused_checkpoint(path, capsys, tmp_path / "r") == (
        f"checkpoint {path} {reason}; accepted: a whole safetensors file or torch.save state dict (a copy cut short "
        "reads as this)")


def test_a_checkpoint_with_other_keys_or_shapes_lists_the_first_differences(tmp_path, capsys):
    weights = _digits_weights(tmp_path)
    names = list(weights)
    renamed = {("renamed." + name if name in names[:4] else name): tensor for name, tensor in weights.items()}
    path = tmp_path / "keys.safetensors"
    save_file(renamed, path)
    from tasks.digits.model import build_model

    missing = [name for name in build_model().state_dict() if name in names[:4]]
    line = _refused_checkpoint(path, capsys, tmp_path / "r")
    assert line == (f"checkpoint {path} does not fit digits_vit_seed0: missing keys {', '.join(missing[:3])} (+1 more); "
                    f"unexpected keys {', '.join('renamed.' + name for name in names[:3])} (+1 more)")
    floats = [name for name in names if weights[name].dim() >= 1][:4]
    for name in floats:
        weights[name] = torch.zeros(*weights[name].shape[:-1], weights[name].shape[-1] + 1)
    save_file(weights, path)
    expected = ", ".join(f"{name} has shape {tuple(weights[name].shape)} in the file, "
                         f"{tuple(weights[name].shape[:-1]) + (weights[name].shape[-1] - 1,)} in the model"
                         for name in [name for name in build_model().state_dict() if name in floats][:3])
    assert _refused_checkpoint(path, capsys, tmp_path / "r") == (
        f"checkpoint {path} does not fit digits_vit_seed0: {expected} (+1 more)")


def test_a_timm_checkpoint_with_non_finite_weights_is_refused_before_the_grid(tmp_path, capsys):
    from tiny_imagenet import IMAGENET_MODEL, tiny_imagenet

    setup = tiny_imagenet(tmp_path / "imagenet")
    weights = torch.load(setup.options["checkpoint"], weights_only=True)
    weights["head.weight"][0, :4] = float("inf")
    path = tmp_path / "inf.pth"
    torch.save(weights, path)
    task = ["--methods", "noise", "--tasks", "imagenet", "--models", IMAGENET_MODEL, "--bits", "fp",
            "--data-root", setup.options["data_root"], "--task-opt", "num_workers=0", "--no-progress", "--no-report"]
    assert _refused_checkpoint(path, capsys, tmp_path / "r", task) == (
        f"checkpoint {path}: 4 non-finite values in head.weight; accepted: weights that are all finite numbers "
        "(a file saved from a trained model)")


# --- a broken third-party plugin: report refuses it by name, as list and run do ---

def test_report_refuses_a_broken_plugin_by_name(results, outside_plugin, capsys):
    outside_plugin("broken_dfq_plugin", "raise RuntimeError('boom')\n")
    assert main(["report", "--results", str(results)]) == 2
    assert _one_error(capsys) == "plugin 'broken_dfq_plugin' failed to load: RuntimeError: boom"
    assert not (results / "report").exists()
