"""The benchmarks that tests keep working, in their quick modes (figures are printed, never asserted; the GPU
check's verdicts are: every method and calibrator ok, the evaluation cache hit, a wrong-device cell named)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from benchmark_scripts import BENCHMARKS, load_benchmark
from harness.entry.cli import main as cli_main
from harness.plugin.calibrators import MinMaxCalibrator
from harness.plugin.registry import CALIBRATORS, METHODS, TUNERS


def test_imagenet_throughput_quick(tmp_path, capsys):
    throughput = load_benchmark("imagenet_throughput")
    figures = throughput.main(["--quick", "--workdir", str(tmp_path), "--workers", "0"])
    val = tmp_path / "imagenet" / "val"
    jpegs = sorted(val.glob("*/*.JPEG"))
    assert len([folder for folder in val.iterdir() if folder.is_dir()]) == 1000
    assert len(jpegs) == figures["images"] == 24
    assert all(40 <= min(Image.open(path).size) < 80 for path in jpegs)
    rates = [figures[key] for key in ("decode_transform", "cache_build", "cache_hit")]
    rates += [value for row in figures["models"].values() for value in row.values()]
    assert len(rates) == 3 + 2 * 5 and all(math.isfinite(value) and value > 0 for value in rates)
    assert figures["one_entry_for_all_models"]
    for name in throughput.MODELS:  # the first cell built its entry, the later cell read it
        assert len(list((tmp_path / f"harness_cache_{name}" / "imagenet_eval").glob("*/images.npy"))) == 1
    printed = capsys.readouterr().out
    assert all(name in printed for name in throughput.MODELS) and "cache hit (every later cell)" in printed


def test_gpu_check_names_missing_dependencies_and_installs_them_from_wheels(tmp_path, monkeypatch):
    gpu_check = load_benchmark("gpu_check")
    required = gpu_check.required_distributions()
    assert {"torch", "timm", "pyyaml", "scikit-learn", "scipy", "huggingface_hub", "matplotlib"} <= set(required)
    assert gpu_check.missing_distributions(required) == []  # this environment has them all: nothing to install
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["torch==2.14.1", "timm>=1.0.20,<1.1", "Foo.Bar[extra] ; '
                         'python_version >= \'3.10\'"]\n')
    assert gpu_check.required_distributions(pyproject) == ["torch", "timm", "Foo.Bar"]
    assert gpu_check.missing_distributions(["torch", "dfq-no-such-dist", "PyYAML"]) == ["dfq-no-such-dist"]
    with pytest.raises(SystemExit) as without_wheels:
        gpu_check.ensure_dependencies(None, ["torch", "dfq-no-such-dist"])
    message = str(without_wheels.value.code)
    assert len(message.splitlines()) == 1 and "missing dfq-no-such-dist;" in message and "--wheels DIR" in message
    commands = []
    monkeypatch.setattr(gpu_check.subprocess, "run", lambda command: commands.append(command) or
                        subprocess.CompletedProcess(command, 0))
    with pytest.raises(SystemExit, match=f"still missing dfq-no-such-dist after installing from {tmp_path}"):
        gpu_check.ensure_dependencies(tmp_path, ["torch", "dfq-no-such-dist"])
    assert commands == [[sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(tmp_path),
                         "dfq-no-such-dist"]]
    gpu_check.ensure_dependencies(None, ["torch"])  # nothing missing: no pip, no exit
    assert len(commands) == 1


class _CalibratesOnTheWrongDevice(MinMaxCalibrator):
    """Leaves the head's bias on another device than the cell's: the bug a CUDA cell must name."""

    def calibrate(self, qmodel, context):
        super().calibrate(qmodel, context)
        qmodel.head.bias = torch.nn.Parameter(qmodel.head.bias.detach().to("meta"), requires_grad=False)


@pytest.fixture
def wrong_device_calibrator():
    CALIBRATORS.add("test_wrong_device", _CalibratesOnTheWrongDevice)
    yield "test_wrong_device"
    CALIBRATORS._entries.pop("test_wrong_device")


def test_gpu_check_names_a_cell_that_left_a_tensor_on_the_wrong_device(tmp_path, capsys, wrong_device_calibrator):
    gpu_check = load_benchmark("gpu_check")

    class InProcessCLI(gpu_check.HarnessCLI):
        """The check's grid in this process, where the test's calibrator is registered."""

        def run(self, results, grid):
            return cli_main(self.arguments(results, grid))

    cli = InProcessCLI(gpu_check.QUICK, torch.device("cpu"), tmp_path / "cells", tmp_path / "work")
    report = gpu_check.Report()
    cells = {name: ("real", name, None) for name in ("minmax", wrong_device_calibrator)}
    gpu_check.check_digits_cells(report, cli, "calibrators", cells, ["--data", "real", "--calib", ",".join(cells)])
    assert report.failed == [f"calibrators {wrong_device_calibrator}"]
    failed = report.checks["calibrators"][wrong_device_calibrator]
    assert failed["status"] == "FAILED"
    assert failed["error"] == "RuntimeError: Tensor on device meta is not on the expected device cpu!"
    line = next(line for line in capsys.readouterr().out.splitlines() if wrong_device_calibrator in line
                and line.startswith("calibrators"))
    assert line == f"calibrators  {wrong_device_calibrator} FAILED {failed['error']} (at {failed['where']})"
    assert re.fullmatch(r"harness/\S+\.py:\d+ in \w+", failed["where"])  # the innermost frame of this repository
    minmax = report.checks["calibrators"]["minmax"]
    assert minmax["status"] == "ok" and minmax["device"] == "cpu" and 0 <= minmax["top1"] <= 100
    no_record = gpu_check.cell_result(None, torch.device("cuda"), 2)
    assert no_record == {"status": "FAILED", "error": "no record: `harness run` exited with status 2 first"}
    minmax_record = gpu_check.records_by_stages(tmp_path / "cells" / "digits")[("real", "minmax", None)]
    elsewhere = gpu_check.cell_result(minmax_record, torch.device("cuda"), 0)  # a cell that fell back to the CPU
    assert elsewhere == {"status": "FAILED", "error": "the cell ran on cpu, not cuda"}


def _rehearse(out, *options, environment=()):
    """``gpu_check.sh --device cpu --quick`` with this interpreter: its exit status, console and JSON."""
    command = ["bash", str(BENCHMARKS / "gpu_check.sh"), "--device", "cpu", "--quick", "--out", str(out), *options]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1200,
                               env={**os.environ, "PYTHON": sys.executable, **dict(environment)})
    return completed, json.loads((out / "gpu_check.json").read_text())


def _assert_every_plugin_ran_on_the_cli(console, figures, fused):
    for check, names in (("methods", METHODS.names()), ("calibrators", CALIBRATORS.names()), ("tuners", TUNERS.names())):
        assert set(figures[check]) == set(names)
        for name in names:
            assert figures[check][name]["status"] == "ok" and figures[check][name]["device"] == "cpu"
            assert figures[check][name]["fused"] in fused
            top1 = figures[check][name]["top1"]
            assert re.search(rf"^{check} +{re.escape(name)} +ok +top-1 +{top1:.2f} ", console, re.M)
    imagenet = figures["imagenet"]
    assert imagenet["second_run_cache_hit"] is True and imagenet["images"] == 8
    assert len(imagenet["first_run"]["cache_entries"]) == 1
    assert imagenet["second_run"]["cache_entries"] == imagenet["first_run"]["cache_entries"]
    assert "second run served from the evaluation cache: yes" in console


def test_gpu_check_quick_rehearsal_of_the_cli_cells(tmp_path):
    # fused kernels off (tests/harness/test_fused.py covers them): compiling them in each CLI process costs a third
    # of this test's time; the cells inherit the switch, as a user's environment reaches them
    completed, figures = _rehearse(tmp_path, "--only", "methods,calibrators,tuners,imagenet",
                                   environment={"DFQ_HARNESS_FUSED": "0"})
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    _assert_every_plugin_ran_on_the_cli(completed.stdout, figures, fused={"off"})
    assert figures["checks_run"] == ["methods", "calibrators", "tuners", "imagenet"]
    assert set(figures) == {"sizes", "checks_run", "environment", "methods", "calibrators", "tuners", "imagenet",
                            "total"}
    assert figures["total"]["failures"] == [] and "every check passed" in completed.stdout
    log = (tmp_path / "gpu_check.log").read_text()
    assert all(line in log for line in completed.stdout.splitlines()) and "$ python -m harness run --methods" in log
    assert {path.name for path in (tmp_path / "cells").iterdir()} == {"digits", "imagenet_first", "imagenet_second"}


@pytest.mark.slow
def test_gpu_check_quick_rehearsal_of_every_check(tmp_path):
    completed, figures = _rehearse(tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    _assert_every_plugin_ran_on_the_cli(completed.stdout, figures, fused={"compiled", "eager"})
    assert set(figures) == {"sizes", "checks_run", "environment", "agreement", "synthesis", "throughput", "fused",
                            "methods", "calibrators", "tuners", "imagenet", "total"}
    assert figures["agreement"]["fp_argmax_agreement"] == 1.0 and figures["synthesis"]["s_per_iteration"] > 0
    assert figures["total"]["failures"] == []


TINY_CALIBRATOR_OPTIONS = ("adalog.eq_n=32", "adalog.search_rounds=1", "adalog.steps=2", "aphq.search_candidates=16",
                           "aphq.search_rounds=1", "fimaq.search_candidates=16", "fimaq.search_rounds=1",
                           "ptq4vit.candidates=8", "ptq4vit.rounds=1")


def test_calibration_cost_measures_every_calibrator_and_extrapolates_only_the_step_counts(tmp_path, capsys, monkeypatch,
                                                                                           one_thread):
    import harness.progress
    monkeypatch.setattr(harness.progress, "_enabled", harness.progress.progress_enabled())  # main() turns bars off
    monkeypatch.setenv("DFQ_HARNESS_FUSED", "0")  # compiling the kernels would take most of this test's time
    cost = load_benchmark("calibration_cost")
    options = [argument for option in TINY_CALIBRATOR_OPTIONS for argument in ("--calib-opt", option)]
    figures = cost.main(["--model", "toy_vit", "--images", "2", "--calib", "repq,ptq4vit,adalog,aphq,fimaq",
                         "--steps", "3", "--threads", "1", "--json", str(tmp_path / "cost.json"),
                         *options])
    assert json.loads((tmp_path / "cost.json").read_text()) == json.loads(json.dumps(figures))
    rows = {row["calibrator"]: row for row in figures["calibrators"]}
    assert list(rows) == ["minmax", "repq", "ptq4vit", "adalog", "aphq", "fimaq"]  # the reference first
    assert rows["minmax"]["measured"]["ratio_to_minmax"] == 1.0 and rows["adalog"]["options"]["eq_n"] == 32
    for row in rows.values():
        measured = row["measured"]
        assert measured["seconds"] > 0 and measured["peak_rss_gib"] > 0 and 0 <= measured["agreement_percent"] <= 100
    for name, steps in {"aphq": {"iterations": 20000, "mlp_iterations": 20000}, "fimaq": {"iterations": 20000}}.items():
        estimate, low, high = rows[name]["estimate"], rows[name]["measured_at_1_step"], rows[name]["measured"]
        assert (low["steps"], high["steps"]) == (1, 3) and estimate["at_steps"] == steps
        assert estimate["seconds"] == pytest.approx(low["seconds"] + (high["seconds"] - low["seconds"]) / 2 * 19999)
    assert not any("estimate" in rows[name] for name in ("minmax", "repq", "ptq4vit", "adalog"))
    printed = capsys.readouterr().out
    assert printed.count("ESTIMATED from 1 and 3 steps") == 2 and "iterations=20000, mlp_iterations=20000" in printed


def test_calibration_cost_refuses_unequal_step_counts_it_cannot_extrapolate_together():
    from harness.errors import HarnessError
    cost = load_benchmark("calibration_cost")
    with pytest.raises(HarnessError, match="aphq: extrapolation needs its nonzero step options equal"):
        cost.main(["--model", "toy_vit", "--calib", "aphq", "--calib-opt", "aphq.iterations=100"])


def test_synthesis_hashes_cover_every_generator_and_the_v2_tuner(one_thread):
    """The refactoring guard of the synthesis loop runs as the plugins are today (it rotted once when PSAQ-ViT V2's
    loop became a tuner): one digest per set, labels where a generator makes them, the tuned student and rounds."""
    found = load_benchmark("synthesis_hashes").hashes()
    sets = {"psaq", "psaq_v2_init", "spdfq", "spdfq_plain"}
    tuned = {f"psaq_v2 on {name}.{part}" for name in ("psaq_v2_init", "spdfq_plain") for part in ("student", "rounds")}
    assert sets | tuned <= set(found) and set(found) - sets - tuned <= {f"{name}.labels" for name in sets}
    assert all(len(value) == 64 and int(value, 16) >= 0 for value in found.values())
    assert found["psaq_v2 on psaq_v2_init.student"] != found["psaq_v2 on spdfq_plain.student"]


def test_benchmarks_leave_no_temporary_folders_behind(tmp_path):
    """Importing the AdaLog parity script (its tests do), using its work folder, and timing the CLI with and without
    a listing cache leave the temporary folder as they found it (they once left a folder per test session)."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    script = ("import sys; sys.path[:0] = ['tests']; from benchmark_scripts import load_benchmark; "
              "parity = load_benchmark('adalog_parity'); assert parity.workdir().is_dir(); "
              "latency = load_benchmark('cli_latency'); latency.wall_seconds(['--help']); "
              "assert latency.heavy_modules(['--help']) == []")
    subprocess.run([sys.executable, "-c", script], cwd=BENCHMARKS.parent, check=True,
                   env={**os.environ, "TMPDIR": str(temporary)})
    assert list(temporary.iterdir()) == []
