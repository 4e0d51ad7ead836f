import pytest

from harness.errors import HarnessError
from harness.gridfile import load_grid_file, spec_from_settings


def test_grid_file_matches_flags(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("methods: [real, noise]\ntasks: digits\nbits: [w4a3, w8a8]\nseeds: [0, 1]\n"
                    "calib: omse\ngen_opt: {num_images: 16}\nprofile: psaq\nlimit: 50\n")
    spec = spec_from_settings(load_grid_file(path))
    assert spec.methods == ("real", "noise") and spec.tasks == ("digits",) and spec.seeds == (0, 1)
    assert spec.bits == ("w4a3", "w8a8") and spec.calib == ("omse",) and spec.limit == 50
    assert spec.generator_options == {"num_images": 16} and spec.quant.profile == "psaq"
    flags = spec_from_settings({"methods": "real,noise", "tasks": "digits", "bits": "w4a3,w8a8", "seeds": "0,1",
                                "calib": "omse", "gen_opt": ["num_images=16"], "profile": "psaq", "limit": 50})
    assert flags == spec


@pytest.mark.parametrize("text, expected", [
    ("methods: [real\n", "is not valid YAML at line 2"),
    ("- real\n- noise\n", "must be a mapping of run settings"),
    ("methods: [real]\nbitz: [w4a4]\n", "unknown key 'bitz'; accepted: methods"),
])
def test_malformed_grid_files_are_one_line_errors(tmp_path, text, expected):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(HarnessError) as error:
        load_grid_file(path)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_missing_grid_file(tmp_path):
    with pytest.raises(HarnessError, match="is unreadable: No such file"):
        load_grid_file(tmp_path / "absent.yaml")


@pytest.mark.parametrize("settings, expected", [
    ({"seeds": ["a"]}, "seeds must be integers"),
    ({"limit": 0}, "limit must be a positive number"),
    ({"gen_opt": 5}, "generator options must be a mapping"),
    ({"methods": 3}, "methods must be a list"),
])
def test_bad_settings(settings, expected):
    with pytest.raises(HarnessError, match=expected):
        spec_from_settings(settings)
