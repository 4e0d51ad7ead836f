"""Bad values and broken environments are refused before the first cell: one line, exit 2, no record."""
import os
from pathlib import Path

import pytest

from harness.entry.cli import main

CELL = ["--methods", "noise", "--tasks", "digits", "--models", "digits_vit_seed0", "--seeds", "0", "--limit", "20",
        "--bits", "w4a8", "--no-progress", "--no-report"]


def _refused(argv: list[str], expected: str, capsys, results: Path) -> None:
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not list(results.glob("records/*.json"))


@pytest.mark.parametrize("extra, expected", [
    (["--gen-opt", "num_images=-3"], "generator 'noise' option num_images=-3 is out of range; accepted: a value >= 1"),
    (["--gen-opt", "num_images=0"], "num_images=0 is out of range"),
    (["--gen-opt", "num_images=8.5"], "num_images=8.5 is not an integer"),
    (["--gen-opt", "num_images=true"], "num_images=true is not an integer"),
    (["--gen-opt", "num_images=null"], "num_images=null is not an integer"),
    (["--batch-size", "0"], "task 'digits' option batch_size=0 is out of range"),
    (["--seeds", "123456789012345"], "seed 123456789012345 is out of range; accepted: 0 to 4294967295"),
    (["--gen-opt", "psqa.iterations=5"], "unknown generator 'psqa' (did you mean 'psaq'?)"),
    (["--gen-opt", "psaq.iterations=5"], "generator 'psaq' is not in this grid (generators in this grid: noise)"),
    (["--calib-opt", "ranking.rounds=2"], "calibrator 'ranking' is not in this grid"),
    (["--device", "meta"], "unknown device 'meta'; accepted: cpu, cuda, cuda:N, mps"),
    (["--checkpoint", "/nonexistent/weights.safetensors"], "--checkpoint /nonexistent/weights.safetensors: no such file"),
    (["--data-root", "/tmp"], "--data-root is not used by digits"),
    (["--executor", "slurm"], "needs"),  # submitit missing, or no sbatch on PATH: either way before the grid
])
def test_bad_values_are_refused_before_the_grid(extra, expected, capsys, tmp_path):
    _refused([*CELL, *extra, "--results", str(tmp_path)], expected, capsys, tmp_path)


def test_a_typed_option_of_a_plugin_in_the_grid_names_what_is_accepted(capsys, tmp_path):
    argv = [*CELL, "--methods", "psaq", "--gen-opt", "psaq.iterations=abc", "--results", str(tmp_path)]
    _refused(argv, "generator 'psaq' option iterations=abc is not an integer", capsys, tmp_path)


@pytest.mark.parametrize("grid, expected", [
    ("keep_first_last_fp: maybe\n", "keep_first_last_fp is 'maybe', expected true or false"),
    ("batch_size: -1\n", "batch_size is -1, expected an integer >= 1"),
    ("limit: true\n", "limit is True, expected an integer >= 1"),
])
def test_bad_grid_values_are_refused(grid, expected, capsys, tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(grid)
    flags = [arg for arg in CELL if arg not in ("--limit", "20")]  # flags override the file's values
    _refused([*flags, "--grid", str(path), "--results", str(tmp_path)], expected, capsys, tmp_path)


def test_a_binary_grid_file_is_refused(capsys, tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_bytes(bytes(range(128, 256)) * 4)
    _refused([*CELL, "--grid", str(path), "--results", str(tmp_path)],
             "is not UTF-8 text (byte 0x80 at offset 0); accepted: a YAML or JSON text file", capsys, tmp_path)


@pytest.mark.parametrize("make_out, expected", [
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", "is not usable (Not a directory"),
    (lambda tmp: Path("/proc/dfq-results"), "results folder /proc/dfq-results is not usable"),
])
def test_an_unusable_results_folder_is_one_line(make_out, expected, capsys, tmp_path):
    _refused([*CELL, "--results", str(make_out(tmp_path))], expected, capsys, tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_results_folder_is_one_line(capsys, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    _refused([*CELL, "--results", str(out)], "is not usable (Permission denied", capsys, tmp_path)


def test_a_directory_where_a_record_belongs_stops_before_the_grid_even_with_force(capsys, tmp_path):
    assert main(["run", *CELL, "--results", str(tmp_path)]) == 0
    record = next(tmp_path.glob("records/*.json"))
    record.unlink()
    record.mkdir()
    capsys.readouterr()
    for extra in ([], ["--force"]):
        assert main(["run", *CELL, *extra, "--results", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"{record} should be a record file but is a directory; move it away and rerun" in err
        assert record.is_dir()


def test_a_missing_data_root_is_one_message_not_an_error_record_per_cell(capsys, tmp_path):
    argv = ["--methods", "noise,real", "--tasks", "imagenet", "--bits", "w4a8,w8a8", "--no-progress", "--no-report",
            "--results", str(tmp_path)]
    _refused(argv, "imagenet needs the ImageNet root: pass --data-root DIR", capsys, tmp_path)
    _refused([*argv, "--data-root", str(tmp_path)], f"imagenet: {tmp_path / 'val'} not found", capsys, tmp_path)


def test_the_digits_task_honours_a_checkpoint(tmp_path, capsys):
    """Other weights for the same model name are another cell (their own weights id) and another result."""
    import json

    from tasks.digits.shipped import shipped_weights

    other = shipped_weights("digits_vit_seed1")[0]
    fp = ["--methods", "noise", "--models", "digits_vit_seed0", "--bits", "fp", "--no-progress", "--no-report",
          "--results", str(tmp_path)]
    assert main(["run", *fp]) == 0
    assert main(["run", *fp, "--checkpoint", str(other)]) == 0
    assert main(["run", *fp[:3], "digits_vit_seed1", *fp[4:]]) == 0
    records = [json.loads(p.read_text()) for p in tmp_path.glob("records/*.json")]
    by_weights = {r["weights_id"]: r["metrics"]["top1"] for r in records}
    assert len(records) == 3 and len(by_weights) == 2  # seed1's file under either name: one weights id
    own = next(r for r in records if r["model"] == "digits_vit_seed1")
    assert by_weights[own["weights_id"]] == pytest.approx(own["metrics"]["top1"])
    assert sorted(by_weights.values()) == pytest.approx(sorted([95.93, 98.70]), abs=0.01)
