"""``new-method`` / ``new-tuner`` / ``new-task`` write plugins that run and conform; an installed outside plugin is found and runs.

Plugins scaffolded into a temporary folder are not discovered by the harness: their own tests run
in a subprocess of pytest, which puts that folder on ``sys.path`` and imports each plugin package.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.entry import scaffold
from harness.entry.cli import main
from harness.store.paths import cache_dir

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "dfq_example_plugin"
TIMEOUT_S = 600


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """A subprocess on one torch thread: tiny models stall on a busy 2-core machine with more."""
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@pytest.mark.parametrize("argv, expected", [
    (["new-method", "2fast"], "'2fast' is not a lowercase Python identifier"),
    (["new-method", "class"], "'class' is not a lowercase Python identifier"),
    (["new-task", "Fancy"], "'Fancy' is not a lowercase Python identifier"),
    (["new-method", "noise"], "method 'noise' is already registered; choose another name"),
    (["new-method", "minmax", "--calibrator-only"], "calibrator 'minmax' is already registered"),
    (["new-method", "x", "--generator-only", "--calibrator-only"], "not allowed with argument"),
    (["new-method", "json"], "'json' is already an importable module"),
    (["new-task", "digits"], "task 'digits' is already registered"),
    (["new-tuner", "lsq_kd"], "tuner 'lsq_kd' is already registered"),
])
def test_bad_names_are_one_line_errors_and_write_nothing(argv, expected, tmp_path, capsys):
    assert main([*argv, "--dest", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and captured.err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_an_existing_folder_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert main(["new-method", "taken", "--dest", str(tmp_path)]) == 2
    assert f"{tmp_path / 'taken'} already exists" in capsys.readouterr().err
    assert not list((tmp_path / "taken").iterdir())


def test_default_destination_is_where_discovery_looks(tmp_path, monkeypatch):
    assert scaffold.plugin_folder("methods") == REPO / "methods"
    assert scaffold.plugin_folder("tasks") == REPO / "tasks"
    monkeypatch.setattr(scaffold, "plugin_folder", lambda kind: tmp_path / kind)  # keep the checkout clean
    written = scaffold.new_task("default_dest_task").files
    assert written[0] == tmp_path / "tasks" / "default_dest_task" / "__init__.py"
    assert written[-1] == tmp_path / "tests" / "tasks" / "test_default_dest_task.py"
    assert "from tasks.default_dest_task import DefaultDestTaskTask" in written[-1].read_text()


def test_scaffolded_plugins_pass_their_tests_and_the_kit(tmp_path, capsys):
    dest = tmp_path / "plugins"
    for argv in (["new-method", "scaffolded_both"], ["new-method", "scaffolded_gen", "--generator-only"],
                 ["new-method", "scaffolded_cal", "--calibrator-only"], ["new-tuner", "scaffolded_tuner"],
                 ["new-task", "scaffolded_task"]):
        assert main([*argv, "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert f"written: {dest / 'scaffolded_both' / 'generator.py'}" in out
    assert f"test: python -m pytest {dest / 'scaffolded_task'}" in out
    assert sorted(p.name for p in (dest / "scaffolded_cal").iterdir()) == ["__init__.py", "calibrator.py",
                                                                            "test_scaffolded_cal.py"]
    cache = tmp_path / "cache"  # the scaffolded task trains its model here; digits models are shared
    cache.mkdir()
    (cache / "digits").symlink_to(cache_dir() / "digits", target_is_directory=True)
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(dest)], cwd=dest, DFQ_HARNESS_CACHE=str(cache))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert sorted(p.name for p in (dest / "scaffolded_tuner").iterdir()) == ["__init__.py", "test_scaffolded_tuner.py",
                                                                              "tuner.py"]
    # the kit's cases (generator, calibrator, method; tuner; task) and the templates' own tests, 17 in all
    assert "17 passed" in result.stdout, result.stdout[-2000:]


def test_an_installed_outside_plugin_is_listed_runs_and_conforms(tmp_path):
    source, site = tmp_path / "source", tmp_path / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    install = _run(["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
                    "--target", str(site), str(source)], cwd=tmp_path)  # a copy: pip builds inside the source tree
    assert install.returncode == 0, install.stderr
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    listing = _run(["-m", "harness", "list", "methods"], cwd=tmp_path, PYTHONPATH=path)
    assert "smooth_noise  smooth_noise + percentile" in listing.stdout, listing.stderr
    run = _run(["-m", "harness", "run", "--methods", "smooth_noise", "--models", "digits_vit_seed0", "--bits", "w8a8",
                "--limit", "64", "--results", str(tmp_path / "results"), "--no-progress", "--no-report"],
               cwd=tmp_path, PYTHONPATH=path)
    assert run.returncode == 0 and "1 cells computed" in run.stdout, run.stdout + run.stderr
    record = json.loads(next((tmp_path / "results" / "records").glob("*.json")).read_text())
    assert (record["status"], record["generator"], record["options"]["generator"]["scale"]) == ("ok", "smooth_noise", 4)
    kit = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")], cwd=source, PYTHONPATH=path)
    assert kit.returncode == 0 and "2 passed" in kit.stdout, kit.stdout[-2000:]


def test_the_synthesis_template_is_short_and_passes_its_test_and_the_kit(tmp_path, capsys):
    dest = tmp_path / "plugins"
    assert main(["new-method", "scaffolded_synth", "--generator-only", "--template", "synthesis",
                 "--dest", str(dest)]) == 0
    generator = (dest / "scaffolded_synth" / "generator.py").read_text()
    assert "PixelSynthesis" in generator and len(generator.splitlines()) < 60
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(dest)], cwd=dest, PYTHONPATH=str(REPO))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert main(["new-method", "x", "--calibrator-only", "--template", "synthesis", "--dest", str(tmp_path)]) == 2
    assert "--template synthesis writes a generator" in capsys.readouterr().err
