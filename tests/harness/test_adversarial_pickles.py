"""Issue 31: a pickle planted at every place the harness reads from disk never runs. Each place gets a file
whose unpickling would create a marker file; the command that reads the place runs, the marker never
appears, and the file is named as unusable (rebuilt or refused), or ignored where the harness does not read
that file at all. Nothing the harness reads is a pickle: JSON, safetensors, .npy without objects, YAML's safe
subset, and torch's weights-only unpickler for torch.save checkpoints."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.entry.cli import main
from harness.run.grid import GridSpec
from harness.run.runner import GridRunner
from harness.store.records import ResultStore
from tiny_imagenet import IMAGENET_MODEL, tiny_imagenet

CELL = ["--methods", "noise", "--tasks", "digits", "--models", "digits_vit_seed0", "--seeds", "0", "--limit", "20",
        "--no-progress", "--no-report"]
UNREADABLE_CHECKPOINT = "; accepted: a whole safetensors file or torch.save state dict (a copy cut short reads as this)"


class _Marker:
    """Unpickling this creates ``path``: the proof that a planted pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def _pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": _Marker(marker)}, protocol=2)  # protocol 2: what torch's legacy reader speaks


def _torch_pickle(path: Path, marker: Path) -> None:
    """A torch.save file (a zip holding a pickle) with a tensor beside the payload, as a doctored checkpoint."""
    torch.save({"weight": torch.zeros(2), "payload": _Marker(marker)}, path)


def _object_npy(path: Path, marker: Path) -> None:
    """A real .npy file whose object array unpickles the payload if loaded with allow_pickle."""
    with open(path, "wb") as handle:  # np.save would add .npy to a name without it
        np.save(handle, np.array([_Marker(marker)], dtype=object), allow_pickle=True)


def _run(results: Path, bits: str = "w8a8", *flags: str) -> int:
    return main(["run", *CELL, "--bits", bits, "--results", str(results), *flags])


def _err_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err, err
    return err.splitlines()


# --- each place: plant, read through the public entry point, check the file is named (or ignored) -------

def _record(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    (path,) = results.glob("records/*.json")
    path.write_bytes(_pickle(marker))
    assert _run(results, "w4a8") == 0
    lines = _err_lines(capsys)
    assert f"  {path}: not valid JSON (a torn or edited file)" in lines
    assert len(list(ResultStore(results).records())) == 1  # recomputed; the pickle set aside under invalid/
    (aside,) = results.glob("invalid/*.json")
    assert aside.read_bytes() == _pickle(marker)


def _record_under_another_name(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    path = results / "records" / "planted.json"
    path.write_bytes(_pickle(marker))
    assert _run(results, "w4a8") == 0
    assert f"  {path}: not valid JSON (a torn or edited file)" in _err_lines(capsys)
    assert path.read_bytes() == _pickle(marker)  # named at every run, never moved: no cell has this name


def _calibration_set(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    (path,) = results.glob("cache/generators/noise/*.safetensors")
    path.write_bytes(_pickle(marker))
    assert _run(results) == 0
    (line,) = [line for line in _err_lines(capsys) if "calibration set" in line]
    assert line.startswith(f"warning: calibration set {path} is not usable (not a safetensors file (")
    assert line.endswith("; torn or replaced)); regenerating it")
    assert set(load_file(path)) == {"images"}  # rewritten as tensors


def _calibration_set_of_the_old_format(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    (current,) = results.glob("cache/generators/noise/*.safetensors")
    path = current.with_suffix(".pt")  # what the cache held before safetensors: ignored, never read
    _torch_pickle(path, marker)
    assert _run(results) == 0
    assert not [line for line in _err_lines(capsys) if "calibration set" in line]
    (record,) = [r for r in ResultStore(results).records() if r["bits"] == "w8a8"]
    assert record["generator_cache_hit"] is True


def _fp_metric(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    (path,) = results.glob("fp/*.json")
    path.write_bytes(_pickle(marker))
    assert _run(results) == 0
    assert [line for line in _err_lines(capsys) if "FP metric" in line] == [
        f"warning: FP metric {path} is not usable (not valid JSON (a torn or edited file)); recomputing it"]


def _lock_file(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    """Lock files are locked, never parsed: a pickle there is ignored."""
    for path in results.glob("locks/*.lock"):
        path.write_bytes(_pickle(marker))
    assert _run(results) == 0
    assert "1 cells computed" in capsys.readouterr().out


def _report_inputs(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    """What ``report`` reads: records (and those set aside under invalid/) and the gallery's calibration sets."""
    (record,) = results.glob("records/*.json")
    (calibration,) = results.glob("cache/generators/noise/*.safetensors")
    for path in (record, results / "records" / "planted.json", results / "invalid" / "planted.20260101T000000.json",
                 calibration, results / "failures" / f"{record.stem}.json"):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_pickle(marker))
    assert main(["report", "--results", str(results)]) == 0
    assert _err_lines(capsys) == []
    index = (results / "report" / "index.md").read_text()
    for name in (record.name, "planted.json", "planted.20260101T000000.json"):
        assert f"- `{name}`: " in index and "not valid JSON (a torn or edited file)" in index
    assert list(ResultStore(results).calibration_entries()) == []  # the gallery skips it


def _checkpoint(make: Callable[[Path, Path], None], suffix: str, reason: str):
    def place(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
        path = tmp_path / f"weights{suffix}"
        make(path, marker)
        assert _run(tmp_path / "fresh", "fp", "--checkpoint", str(path)) == 2
        assert _err_lines(capsys) == [f"error: checkpoint {path} is unreadable ({reason}){UNREADABLE_CHECKPOINT}"]
        assert not (tmp_path / "fresh" / "records").exists() or not list((tmp_path / "fresh").glob("records/*.json"))
    return place


def _timm_checkpoint(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    """The imagenet task's reader allows argparse.Namespace beside the weights (DeiT's releases): no more."""
    setup = tiny_imagenet(tmp_path / "imagenet")
    weights = torch.load(setup.options["checkpoint"], weights_only=True)
    path = tmp_path / "doctored.pth"
    torch.save({"model": weights, "args": _Marker(marker)}, path)
    task = ["--methods", "noise", "--tasks", "imagenet", "--models", IMAGENET_MODEL, "--bits", "fp", "--data-root",
            setup.options["data_root"], "--task-opt", "num_workers=0", "--no-progress", "--no-report"]
    assert main(["run", *task, "--checkpoint", str(path), "--results", str(tmp_path / "fresh")]) == 2
    assert _err_lines(capsys) == [f"error: checkpoint {path} is unreadable (UnpicklingError: Unsupported global: "
                                  f"GLOBAL io.open was not an allowed global by default){UNREADABLE_CHECKPOINT}"]


def _openmmlab_checkpoint(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    """OpenMMLab checkpoints are read with a short allowlist (numpy scalars, HistoryBuffer): no more."""
    pytest.importorskip("mmengine", reason="the detseg extra (mmengine) is not installed")
    from harness.data.mm.checkpoint import load_weights
    from harness.errors import HarnessError

    path = tmp_path / "mm.pth"
    torch.save({"state_dict": {"weight": torch.zeros(2, 2)}, "meta": {"hook": _Marker(marker)}}, path)
    with pytest.raises(HarnessError) as error:
        load_weights(torch.nn.Linear(2, 2, bias=False), path)
    assert str(error.value) == (f"checkpoint {path} is unreadable (UnpicklingError: Unsupported global: GLOBAL "
                                f"io.open was not an allowed global by default){UNREADABLE_CHECKPOINT}")


def _eval_cache(name: str, plant: Callable[[Path, Path], None], reason: str):
    def place(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
        options = tiny_imagenet(tmp_path / "imagenet").options
        spec = GridSpec(methods=("noise",), tasks=("imagenet",), models=(IMAGENET_MODEL,), bits=("fp",), seeds=(0,),
                        task_options=options)
        (first,) = GridRunner(tmp_path / "r", force=True).run(spec).records
        (path,) = (tmp_path / "cache" / "imagenet_eval").glob(f"*/{name}")
        whole = path.read_bytes()
        plant(path, marker)
        capsys.readouterr()
        (again,) = GridRunner(tmp_path / "r", force=True).run(spec).records
        assert [line for line in _err_lines(capsys) if "eval cache" in line] == [
            f"warning: eval cache entry {path.parent} is not usable ({name} unreadable ({reason}; truncated or "
            "replaced)); rebuilding it"]
        assert again["status"] == "ok" and again["metrics"] == first["metrics"] and path.read_bytes() == whole
    return place


def _grid_file(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    path = tmp_path / "grid.yaml"
    path.write_bytes(_pickle(marker))
    assert main(["run", "--grid", str(path), "--results", str(tmp_path / "fresh")]) == 2
    assert _err_lines(capsys) == [f"error: grid file {path} is not UTF-8 text (byte 0x80 at offset 0); "
                                  "accepted: a YAML or JSON text file"]


def _grid_file_with_a_python_tag(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    """YAML's own pickle: a tag that calls a function while loading."""
    path = tmp_path / "grid.yaml"
    path.write_text(f"methods: !!python/object/apply:builtins.open ['{marker}', w]\n")
    assert main(["run", "--grid", str(path), "--results", str(tmp_path / "fresh")]) == 2
    assert _err_lines(capsys) == [
        f"error: grid file {path} is not valid YAML at line 1, column 10: could not determine a constructor for the "
        "tag 'tag:yaml.org,2002:python/object/apply:builtins.open'; accepted: plain YAML (mappings, lists, strings, "
        "numbers, true/false; no tags that build objects)"]


def _submitit_folders(results: Path, tmp_path: Path, marker: Path, capsys) -> None:
    """submitit's job pickles live in a new folder per grid under the cache: pickles planted beside it, in an
    earlier grid's folder or in the results folder share no job's name and are never read."""
    pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[cluster]')")
    cache = Path(os.environ["DFQ_HARNESS_CACHE"])
    names = [f"{job}_{part}.pkl" for job in (*range(os.getpid() - 5, os.getpid() + 50), "%j")
             for part in ("submitted", "result")]
    planted = [cache / "submitit", cache / "submitit" / "jobs.planted", results / "submitit"]
    for folder in planted:
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_bytes(_pickle(marker))
    assert _run(results, "w8a8", "--executor", "submitit-local") == 0
    for folder in planted:
        assert all((folder / name).read_bytes() == _pickle(marker) for name in names)
    (record,) = [r for r in ResultStore(results).records() if r["bits"] == "w8a8"]
    assert record["status"] == "ok"


PLACES = {
    "a record": _record,
    "a record under a name no cell has": _record_under_another_name,
    "a calibration set": _calibration_set,
    "a calibration set of the old .pt format": _calibration_set_of_the_old_format,
    "an FP metric": _fp_metric,
    "a lock file": _lock_file,
    "the report's inputs": _report_inputs,
    "a torch.save checkpoint": _checkpoint(
        _torch_pickle, ".pth",
        "UnpicklingError: Unsupported global: GLOBAL io.open was not an allowed global by default"),
    "a raw pickle as checkpoint": _checkpoint(
        lambda path, marker: path.write_bytes(_pickle(marker)), ".pth",
        "UnpicklingError: Unsupported global: GLOBAL io.open was not an allowed global by default"),
    "a pickle named .safetensors": _checkpoint(
        lambda path, marker: path.write_bytes(_pickle(marker)), ".safetensors",
        "SafetensorError: Error while deserializing header: header too large"),
    "a timm checkpoint": _timm_checkpoint,
    "an OpenMMLab checkpoint": _openmmlab_checkpoint,
    "the eval cache's images": _eval_cache(
        "images.npy", lambda path, marker: path.write_bytes(_pickle(marker)),
        "This file contains pickled (object) data. If you trust the file you can load it "),  # numpy's, cut at 80
    "the eval cache's labels": _eval_cache(
        "labels.npy", _object_npy, "Object arrays cannot be loaded when allow_pickle=False"),
    "a grid file": _grid_file,
    "a grid file with a Python tag": _grid_file_with_a_python_tag,
    "the submitit folders": _submitit_folders,
}


@pytest.mark.parametrize("place", PLACES.values(), ids=PLACES)
def test_a_planted_pickle_never_runs(place, results, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFQ_HARNESS_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "planted_pickle_ran"
    pickle.loads(_pickle(tmp_path / "proof"))["weight"].close()
    assert (tmp_path / "proof").exists()  # the payload does run when unpickled
    capsys.readouterr()

    place(results, tmp_path, marker, capsys)
    assert not marker.exists()
