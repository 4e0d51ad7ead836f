"""Results know the code that made them: versions recompute, edits are named, caches never run code."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

from harness.run.grid import GridSpec
from harness.run.runner import GridRunner
from harness.store.code_version import _normalized_source, _project_closure, describe_difference, module_digest
from harness.store.records import ResultStore

REPO = Path(__file__).resolve().parents[2]
NOISE_RUN = ["run", "--methods", "noise", "--models", "digits_vit_seed0", "--bits", "w4a8", "--limit", "20",
             "--no-progress"]


def test_the_digest_follows_project_imports_and_ignores_docstrings():
    closure = _project_closure("methods.psaq.generator")
    assert {"methods.psaq.generator", "harness.priors.patch_similarity", "harness.model.fused"} <= closure
    assert not any(name.split(".")[0] in ("torch", "timm") for name in closure)
    # the registry's plugin discovery imports the core calibrators inside a function: not a dependency,
    # so a quantizer change does not mark every generator's calibration sets as made by other code
    assert "harness.quant.calibrate" not in closure and "harness.quant.calibrate" in _project_closure("harness.plugin.calibrators")
    assert "docstrings" not in _normalized_source("harness.store.code_version")  # the module docstring is gone
    assert module_digest("methods.noise") != module_digest("methods.psaq.generator")



def test_an_import_from_the_plugin_api_counts_as_one_from_the_defining_module():
    """methods.noise imports harness.api, which re-exports the priors and the quantizer too: its digest
    must cover the modules it takes names from, not everything the API lists."""
    closure = _project_closure("methods.noise")
    assert {"harness.plugin.method", "harness.plugin.registry"} <= closure
    assert not {"harness.api", "harness.priors.patch_similarity", "harness.quant.search"} & closure

def test_differences_name_the_component_and_what_changed():
    now = {"generator": {"version": "2", "digest": "a"}, "task": {"version": "1", "digest": "b"}}
    assert describe_difference(now, now) == []
    assert describe_difference({"generator": {"version": "1", "digest": "a"}, "task": {"version": "1", "digest": "c"}},
                               now) == ["generator: version 1 -> 2", "task: source changed"]
    assert describe_difference(None, now) == ["no code versions recorded (made before they were)"]


def _copy_of_the_repository(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    for folder in ("harness", "methods", "tasks", "reports"):
        shutil.copytree(REPO / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _harness(repo: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "harness", *argv], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_an_edited_plugin_is_named_then_recomputed_and_a_version_bump_recomputes(tmp_path):
    repo, out = _copy_of_the_repository(tmp_path), tmp_path / "results"
    run = [*NOISE_RUN, "--results", str(out)]
    first = _harness(repo, *run, "--no-report")
    assert first.returncode == 0 and "1 cells computed" in first.stdout, first.stderr
    assert "other code" not in first.stderr
    (record_path,) = (out / "records").glob("*.json")
    (set_path,) = (out / "cache" / "generators" / "noise").glob("*.safetensors")

    # an edit that changes code but not the version: reused, and named with the command that refreshes it
    plugin = repo / "methods" / "noise" / "__init__.py"
    _edit(plugin, "    def generate(self, context", "    edited = True\n\n    def generate(self, context")
    stale = _harness(repo, *run)
    assert stale.returncode == 0 and "0 cells computed, 1 already finished" in stale.stdout, stale.stderr
    assert "reused 1 result(s) made by other code than this checkout" in stale.stderr
    assert f"record {record_path} (noise digits_vit_seed0 w4a8 seed 0): generator: source changed" in stale.stderr
    assert str(set_path) not in stale.stderr  # the set is read only by a cell that is computed
    assert f"to recompute them: python -m harness {' '.join(run)} --recompute-stale" in stale.stderr
    page = (out / "report" / "digits.md").read_text()
    assert "noise † code" in page and "## Made by other code" in page and "generator: source changed" in page

    refreshed = _harness(repo, *run, "--recompute-stale", "--no-report")
    assert refreshed.returncode == 0 and "1 cells computed" in refreshed.stdout, refreshed.stderr
    assert "other code" not in refreshed.stderr
    record = json.loads(record_path.read_text())  # the stale set was regenerated, not reused
    assert record["generator_cache_hit"] is False and record["code"]["generator"]["digest"] == module_digest_in(
        repo, "methods.noise")
    assert _harness(repo, *run, "--no-report").stderr.count("other code") == 0

    # a version bump is a new computation: a new cell id, recomputed without being asked
    _edit(plugin, "    edited = True\n", "    edited = True\n    version = \"2\"\n")
    bumped = _harness(repo, *run, "--no-report")
    assert bumped.returncode == 0 and "1 cells computed" in bumped.stdout and "other code" not in bumped.stderr
    records = [json.loads(path.read_text()) for path in (out / "records").glob("*.json")]
    assert sorted(r["code"]["generator"]["version"] for r in records) == ["1", "2"]
    assert len(list((out / "cache" / "generators" / "noise").glob("*.safetensors"))) == 2


def module_digest_in(repo: Path, module: str) -> str:
    """The digest as the copy's own harness computes it."""
    program = f"from harness.store.code_version import module_digest; print(module_digest({module!r}))"
    return subprocess.run([sys.executable, "-c", program], cwd=repo, capture_output=True, text=True, check=True,
                          timeout=300).stdout.strip()


def test_force_regenerates_the_calibration_sets_and_fp_metrics_its_cells_use_once(tmp_path):
    spec = GridSpec(methods=("noise",), bits=("w8a8", "w4a4"), models=("digits_vit_seed0",), limit=20)
    GridRunner(tmp_path).run(spec)
    (cached,) = (tmp_path / "cache" / "generators" / "noise").glob("*.safetensors")
    (fp,) = (tmp_path / "fp").glob("*.json")
    before = {path: path.stat().st_mtime_ns for path in (cached, fp)}
    forced = GridRunner(tmp_path, force=True).run(spec)
    assert forced.computed == 2
    assert all(path.stat().st_mtime_ns > mtime for path, mtime in before.items())
    assert sorted(r["generator_cache_hit"] for r in forced.records) == [False, True]  # regenerated once


class _Exploit:
    """Unpickling this runs a shell command: what a malicious cache file would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_cache_entry_is_regenerated_never_executed(tmp_path):
    spec = GridSpec(methods=("noise",), bits=("w4a4",), models=("digits_vit_seed0",), limit=20)
    first = GridRunner(tmp_path).run(spec).records[0]
    (entry,) = (tmp_path / "cache" / "generators" / "noise").glob("*.safetensors")
    marker = tmp_path / "owned"
    payload = pickle.dumps({"calibration": _Exploit(marker)})
    entry.write_bytes(payload)
    entry.with_suffix(".pt").write_bytes(payload)  # the old format's name is never read either
    again = GridRunner(tmp_path).run(spec)
    assert again.skipped == 1  # the record stands; the set is only read when a cell needs it
    assert list(ResultStore(tmp_path).calibration_entries()) == []  # the gallery's reader refuses it too
    recomputed = GridRunner(tmp_path, force=True).run(spec).records[0]
    assert recomputed["status"] == "ok" and recomputed["generator_cache_hit"] is False
    assert recomputed["metrics"] == first["metrics"]
    assert not marker.exists()
    (entry_again,) = ResultStore(tmp_path).calibration_entries()
    assert entry_again.path == entry and entry_again.calibration.images.shape == (32, 1, 16, 16)
