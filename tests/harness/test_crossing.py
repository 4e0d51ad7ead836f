"""Generators and calibrators as grid axes: ``--data`` and ``--calib`` lists cross (docs/plugins.md, Methods)."""
import json

import pytest

from harness.entry.cli import main
from harness.errors import HarnessError
from harness.run.grid import GridSpec, expand
from harness.run.gridfile import spec_from_settings
from harness.run.labels import row_label
from harness.run.runner import GridRunner


def _rows(cells) -> set[tuple[str, str, str]]:
    return {(cell.method, cell.generator, cell.calibrator) for cell in cells}


def test_data_and_calib_without_methods_make_one_row_per_pair():
    cells = expand(GridSpec(tasks=("digits",), models=("digits_vit_seed0",), bits=("w4a4", "w4a3"),
                            data=("psaq", "noise", "real"), calib=("minmax", "repq")))
    assert _rows(cells) == {("psaq", "psaq", "minmax"), ("psaq+repq", "psaq", "repq"),
                            ("noise", "noise", "minmax"), ("noise+repq", "noise", "repq"),
                            ("real", "real", "minmax"), ("repq_vit", "real", "repq")}
    assert len(cells) == 6 * 2
    # a pair's row is named after the pair, never after a method it was not
    assert {str(row_label(cell)) for cell in cells} == {"psaq", "psaq+repq", "noise", "noise+repq", "real", "repq_vit"}


def test_with_methods_each_method_runs_with_every_given_pair():
    cells = expand(GridSpec(methods=("psaq", "noise"), tasks=("digits",), models=("digits_vit_seed0",),
                            bits=("w4a4",), calib=("minmax", "percentile")))
    assert _rows(cells) == {("psaq", "psaq", "minmax"), ("psaq", "psaq", "percentile"),
                            ("noise", "noise", "minmax"), ("noise", "noise", "percentile")}
    assert {str(row_label(cell)) for cell in cells} == {"psaq", "psaq (psaq+percentile)", "noise", "noise (noise+percentile)"}


def test_own_stands_for_each_methods_own_calibrator_beside_the_others():
    cells = expand(GridSpec(methods=("psaq", "spdfq", "real"), tasks=("digits",), models=("digits_vit_seed0",),
                            bits=("w4a4",), calib=("own", "repq")))
    assert _rows(cells) == {("psaq", "psaq", "minmax"), ("psaq", "psaq", "repq"), ("spdfq", "spdfq", "block_recon"),
                            ("spdfq", "spdfq", "repq"), ("real", "real", "minmax"), ("real", "real", "repq")}
    # a method whose own calibrator is also given by name runs it once
    assert len(expand(GridSpec(methods=("psaq",), tasks=("digits",), models=("digits_vit_seed0",), bits=("w4a4",),
                               calib=("own", "minmax")))) == 1
    with pytest.raises(HarnessError, match="--data/--calib own: a method's own plugin needs --methods"):
        expand(GridSpec(tasks=("digits",), bits=("w4a4",), data=("noise",), calib=("own", "repq")))


def test_the_default_grid_shows_the_data_free_methods_beside_noise_and_real_images():
    cells = expand(GridSpec())
    own = {("noise", "noise", "minmax"), ("real", "real", "minmax"), ("psaq", "psaq", "minmax"),
           ("psaq_v2", "psaq_v2_init", "minmax"), ("spdfq", "spdfq", "block_recon")}
    with_repq = {("noise+repq", "noise", "repq"), ("repq_vit", "real", "repq"), ("psaq+repq", "psaq", "repq"),
                 ("psaq_v2_init+repq", "psaq_v2_init", "repq"), ("spdfq+repq", "spdfq", "repq")}
    assert _rows(cells) == own | with_repq
    # PSAQ-ViT V2 as published (fine-tuned); its images calibrated by repq are calibration only
    assert {(cell.method, cell.tuner) for cell in cells if cell.tuner} == {("psaq_v2", "psaq_v2")}
    assert {str(cell.bits) for cell in cells} == {"w4a4", "w4a3"}
    assert {cell.model for cell in cells} == {"digits_vit_seed0", "digits_vit_seed1"}
    assert len(cells) == 10 * 2 * 2  # rows x bits x models
    # an option scoped to a plugin of either part is accepted
    tuned = expand(GridSpec(calibrator_options={"repq.input_bits": 6}, seeds=(1,)))
    assert {cell.calibrator_options.input_bits for cell in tuned if cell.calibrator == "repq"} == {6}


def test_an_fp_cell_is_not_repeated_per_pair():
    cells = expand(GridSpec(tasks=("digits",), models=("digits_vit_seed0",), bits=("fp",),
                            data=("psaq", "noise"), calib=("minmax", "repq")))
    assert len(cells) == 1


def test_an_unknown_name_in_a_list_is_refused_with_suggestions():
    with pytest.raises(HarnessError, match=r"unknown calibrator 'repg' \(did you mean 'repq'"):
        expand(GridSpec(tasks=("digits",), bits=("w4a4",), data=("noise",), calib=("minmax", "repg")))


def test_grid_files_take_lists_or_comma_separated_names():
    listed = spec_from_settings({"data": ["psaq", "noise"], "calib": "minmax, repq"})
    assert (listed.data, listed.calib) == (("psaq", "noise"), ("minmax", "repq"))
    with pytest.raises(HarnessError, match="calib must be a list or a comma-separated string"):
        spec_from_settings({"calib": 3})


def test_a_crossed_run_shares_each_generators_images_across_calibrators(tmp_path):
    status = main(["run", "--data", "noise,real", "--calib", "minmax,percentile", "--tasks", "digits",
                   "--models", "digits_vit_seed0", "--bits", "w4a4", "--limit", "40", "--results", str(tmp_path),
                   "--no-report", "--no-progress", "--gen-opt", "real.num_images=8", "--gen-opt", "noise.num_images=8"])
    assert status == 0
    records = [json.loads(path.read_text()) for path in (tmp_path / "records").glob("*.json")]
    assert sorted(record["label"] for record in records) == [f"{row} {{num_images=8}}" for row in
                                                             ("noise", "noise+percentile", "real", "real+percentile")]
    # one calibration set per generator: the second calibrator reuses the first one's images
    assert sorted(path.parent.name for path in (tmp_path / "cache" / "generators").glob("*/*.safetensors")) \
        == ["noise", "real"]
    assert sorted(record["generator_cache_hit"] for record in records) == [False, False, True, True]
    assert GridRunner(tmp_path).run(spec_from_settings({
        "data": "noise,real", "calib": "minmax,percentile", "tasks": "digits", "models": "digits_vit_seed0",
        "bits": "w4a4", "limit": 40, "gen_opt": ["real.num_images=8", "noise.num_images=8"]})).skipped == 4
