"""``--help`` answers without loading the heavy libraries (issue 34, item 2): the parser is built from light
modules only; so does ``list`` when the listing cache matches the checkout (item 1, harness/entry/listing.py), and
prints what the plugins themselves give. Checked in fresh processes, since this test session has torch
loaded already; how long it takes is measured by benchmarks/cli_latency.py, not asserted here (timings vary
by machine)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "timm", "pandas")

# ``python -m harness ARGV`` as __main__ runs it; then the exit code and the heavy libraries in sys.modules
PROBE = """
import json, runpy, sys
argv, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["harness", *argv]
try:
    runpy.run_module("harness", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exit:
    code = exit.code
sys.stdout.flush()
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(heavy))
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], *([command, "--help"] for command in
                                                ("run", "list", "report", "export", "new-method", "new-tuner", "new-task"))],
                         ids=lambda argv: " ".join(argv))
def test_help_loads_no_heavy_library(argv):
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: harness")
    probe = json.loads(result.stderr.strip().splitlines()[-1])
    assert probe == {"code": 0, "loaded": []}


# ``list`` answers from the listing cache (harness/entry/listing.py) when it was made from this checkout's source


def _list(cache: Path, argv: list[str] = ["list"]) -> tuple[str, str, dict]:
    """``python -m harness ARGV`` with the listing cache in ``cache``: stdout, stderr lines before the probe's
    own, and the probe (exit code, heavy libraries loaded)."""
    env = {**os.environ, "DFQ_HARNESS_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)], capture_output=True,
                            text=True, cwd=REPO, timeout=300, env=env)
    *notes, probe = result.stderr.strip().splitlines()
    return result.stdout, "\n".join(notes), json.loads(probe)


@pytest.fixture(scope="module")
def cold_listing(tmp_path_factory) -> tuple[Path, str]:
    """``list`` with an empty cache (every plugin imported), which leaves the cache written."""
    cache = tmp_path_factory.mktemp("listing_cache")
    stdout, notes, probe = _list(cache)
    assert probe["code"] == 0 and "torch" in probe["loaded"] and notes == ""
    return cache, stdout


def _cache_file(cache: Path) -> Path:
    [path] = (cache / "listing").glob("*.json")
    return path


def test_list_with_a_warm_cache_loads_no_heavy_library_and_prints_the_same(cold_listing):
    cache, cold = cold_listing
    stdout, notes, probe = _list(cache)
    assert probe == {"code": 0, "loaded": []} and notes == ""
    assert stdout == cold
    assert "methods:" in stdout and "support (method x task" in stdout


def test_list_of_one_kind_from_the_cache_is_that_section_of_the_whole(cold_listing):
    cache, cold = cold_listing
    stdout, _, probe = _list(cache, ["list", "models"])
    assert probe == {"code": 0, "loaded": []}
    section = cold.split("models:\n", 1)[1].split("\nbits:", 1)[0]
    assert stdout == f"models:\n{section}\n"


def test_a_cache_made_from_other_source_is_not_used(cold_listing, tmp_path):
    cache, cold = cold_listing
    path = _cache_file(cache)
    content = json.loads(path.read_text())
    content["digest"] = "0" * 64  # what another version of the plugins left
    content["listing"]["methods"].append(["phantom", "a method this checkout does not have"])
    stale = tmp_path / "stale"
    (stale / "listing").mkdir(parents=True)
    (stale / "listing" / path.name).write_text(json.dumps(content))
    stdout, notes, probe = _list(stale)
    assert "phantom" not in stdout and stdout == cold and notes == ""
    assert "torch" in probe["loaded"]  # listed from the plugins themselves
    assert json.loads((stale / "listing" / path.name).read_text())["digest"] != "0" * 64  # and brought up to date


def test_a_corrupted_cache_is_named_once_and_ignored(cold_listing, tmp_path):
    cache, cold = cold_listing
    broken = tmp_path / "broken" / "listing" / _cache_file(cache).name
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b'{"format": 1, "digest": "trunc')
    stdout, notes, probe = _list(broken.parent.parent)
    assert probe["code"] == 0 and stdout == cold
    assert notes == (f"note: ignoring the plugin listing cache {broken} (not JSON (JSONDecodeError)); "
                     "listing from the plugins")
    broken.write_text(json.dumps({"format": 1, "digest": "x", "listing": {"methods": "everything"}}))
    stdout, notes, _ = _list(broken.parent.parent, ["list", "bits"])
    assert len(notes.splitlines()) == 1 and "does not have the sections" in notes and str(broken) in notes
    assert stdout == "bits:\n" + cold.split("bits:\n", 1)[1].split("\nsupport", 1)[0] + "\n"


def test_the_digest_covers_every_file_a_listing_could_come_from(tmp_path, monkeypatch):
    """An edit to any plugin or core file, a new plugin folder or a data file beside a plugin changes the
    digest; compiled bytecode does not (it follows the source)."""
    from harness.entry import listing

    for name in ("harness/plugin/registry.py", "methods/noise/__init__.py", "tasks/digits/manifest.json", "pyproject.toml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("original\n")
    monkeypatch.setattr(listing, "PROJECT_ROOT", tmp_path)
    digests = [listing.source_digest()]
    (tmp_path / "methods/noise/__pycache__").mkdir()
    (tmp_path / "methods/noise/__pycache__/x.cpython-311.pyc").write_bytes(b"\0")
    assert listing.source_digest() == digests[0]
    for change in ("methods/noise/__init__.py", "harness/plugin/registry.py", "tasks/digits/manifest.json", "pyproject.toml",
                   "methods/fima_q/__init__.py"):
        (tmp_path / change).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / change).write_text("edited\n")
        digests.append(listing.source_digest())
    (tmp_path / "methods/fima_q/__init__.py").rename(tmp_path / "methods/fima_q/plugin.py")
    digests.append(listing.source_digest())
    assert len(set(digests)) == len(digests)


def test_a_process_holding_plugins_lists_them_not_the_cache(tmp_path, monkeypatch, capsys):
    """In a process that has loaded plugins (a test's stand-ins, a notebook's own), ``list`` shows what it holds."""
    from harness.entry import listing
    from harness.entry.cli import main
    from harness.plugin.registry import METHODS

    METHODS.names()  # plugins loaded here
    monkeypatch.setenv("DFQ_HARNESS_CACHE", str(tmp_path))
    content = {"format": listing.FORMAT, "digest": listing.source_digest(),
               "listing": {**{name: [] for name in listing.SECTIONS}, listing.SUPPORT: []}}
    content["listing"]["methods"] = [["phantom", "not registered here"]]
    listing.cache_path().parent.mkdir(parents=True)
    listing.cache_path().write_text(json.dumps(content))
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "phantom" not in out and "  noise " in out
