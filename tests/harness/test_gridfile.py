import pickle

import pytest

from harness.entry.cli import main
from harness.errors import HarnessError
from harness.run.gridfile import GRID_FILE, GRID_KEYS, MAX_GRID_BYTES, load_grid_file, spec_from_settings

ACCEPTED_KEYS = ", ".join(GRID_KEYS)
PLAIN_YAML = "accepted: plain YAML (mappings, lists, strings, numbers, true/false; no tags that build objects)"
OPTION_VALUE = "expected a string, a finite number, true/false, null or a list of those"


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


def test_a_json_grid_file_indented_with_tabs_matches_the_yaml_one(tmp_path):
    """JSON is read as JSON: YAML refuses the tabs a JSON file may be indented with."""
    (tmp_path / "grid.json").write_text('{\n\t"methods": ["real", "noise"],\n\t"seeds": [0, 1],\n'
                                        '\t"gen_opt": {"num_images": 16, "roll_ranges": [5, 10]}\n}')
    (tmp_path / "grid.yaml").write_text("methods: [real, noise]\nseeds: 0, 1\n"
                                        "gen_opt: [num_images=16, 'roll_ranges=[5, 10]']\n")
    from_json = spec_from_settings(load_grid_file(tmp_path / "grid.json"))
    assert from_json == spec_from_settings(load_grid_file(tmp_path / "grid.yaml"))
    assert from_json.seeds == (0, 1) and from_json.generator_options == {"num_images": 16, "roll_ranges": [5, 10]}


def test_every_grid_key_has_a_declared_shape():
    assert set(GRID_FILE) == set(GRID_KEYS)


def test_null_means_the_flags_default(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("methods:\nseeds: ~\nlimit: null\n")
    assert spec_from_settings(load_grid_file(path)) == spec_from_settings({})


def _bomb(depth: int = 9) -> str:
    """A billion-laughs list: its last element holds 9**depth strings by reference, in a few hundred bytes."""
    levels = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"&a{level} [{', '.join([f'*a{level - 1}'] * 9)}]" for level in range(1, depth)]
    return f"[{', '.join(levels)}]"


HOSTILE = {  # file content -> the one line after "grid file PATH"
    "a list, not a mapping": (
        "- real\n- noise\n",
        f" holds ['real', 'noise'], not a mapping of run settings; accepted: keys {ACCEPTED_KEYS} "
        "(e.g. 'methods: [real, noise]')"),
    "a number, not a mapping": ("42\n", " holds 42, not a mapping of run settings; accepted: keys "),
    "empty": ("", " is empty; accepted: a mapping of run settings (e.g. 'methods: [real, noise]')"),
    "comments only": ("# methods: [real]\n", " is empty; accepted: a mapping of run settings"),
    "unknown key": ("methods: [real]\nbitz: [w4a4]\n",
                    f" has unknown key 'bitz' (did you mean 'bits'?); accepted: {ACCEPTED_KEYS}"),
    "a number as key": ("1: 2\n", f" has unknown key 1; accepted: {ACCEPTED_KEYS}"),
    "a number for a list of names": (
        "methods: 3\n", ": methods is 3, expected a list of method names or a comma-separated string"),
    "a mapping for a list of names": (
        "tasks: {digits: 1}\n", ": tasks is {'digits': 1}, expected a list of task names or a comma-separated string"),
    "nested lists for names": ("methods: [[real, noise], {x: 1}]\n",
                               ": methods[0] is ['real', 'noise'], expected a method name"),
    "a YAML boolean among names": ("methods: [real, no]\n", ": methods[1] is False, expected a method name"),
    "a number among bit widths": ("bits: [w4a8, 8]\n", ": bits[1] is 8, expected a bit width name"),
    "a word among seeds": ("seeds: [0, x]\n", ": seeds[1] is 'x', expected an integer in [0, 4294967295]"),
    "a float seed": ("seeds: [1.5]\n", ": seeds[0] is 1.5, expected an integer in [0, 4294967295]"),
    "a negative seed in a string": ("seeds: 0, -1\n", ": seeds[1] is -1, expected an integer in [0, 4294967295]"),
    "a date for seeds": ("seeds: 2020-01-01\n",
                         ": seeds is datetime.date(2020, 1, 1), expected a list of integer seeds in [0, 4294967295]"),
    "a number for options": (
        "gen_opt: 5\n", ": gen_opt is 5, expected a mapping of generator options or a list of KEY=VALUE"),
    "numbers for KEY=VALUE items": ("calib_opt: [1, 2]\n", ": calib_opt[0] is 1, expected KEY=VALUE"),
    "an item without =": ("task_opt: [num_workers]\n", ": task_opt[0] is 'num_workers', expected KEY=VALUE"),
    "a number as option name": ("gen_opt: {1: 2}\n", ": gen_opt has the key 1, expected generator option names"),
    "a nested option value": ("gen_opt: {lr: {a: [1, [2]]}}\n", f": gen_opt.lr is {{'a': [1, [2]]}}, {OPTION_VALUE}"),
    "a NaN option": ("calib_opt: {percentile: .nan}\n", f": calib_opt.percentile is nan, {OPTION_VALUE}"),
    "a list for a path": ("data_root: [a, b]\n", ": data_root is ['a', 'b'], expected a folder path"),
    "a number for a flag": ("keep_first_last_fp: 1\n", ": keep_first_last_fp is 1, expected true or false"),
    "a fraction for a limit": ("limit: 2.5\n", ": limit is 2.5, expected an integer >= 1"),
    "a zero batch size": ("batch_size: 0\n", ": batch_size is 0, expected an integer >= 1"),
    "an unknown runtime": ("deploy: tensorrt\n", ": deploy is 'tensorrt', expected one of onnxruntime"),
    "a list that holds itself": ("methods: &a [*a]\n",
                                 ": methods[0] is [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[, expected a method name"),
    "an alias bomb for a list of names": (f"methods: {_bomb()}\n",
                                          ": methods[0] is ['lol', 'lol', 'lol', 'lol', 'lol', 'lol, expected "
                                          "a method name"),
    "an alias bomb as an option value": (f"gen_opt: {{lr: {_bomb()}}}\n",
                                         f": gen_opt.lr is [['lol', 'lol', 'lol', 'lol', 'lol', 'lo, {OPTION_VALUE}"),
    "a Python tag": ("methods: !!python/object/apply:os.system ['touch planted']\n",
                     " is not valid YAML at line 1, column 10: could not determine a constructor for the tag "
                     f"'tag:yaml.org,2002:python/object/apply:os.system'; {PLAIN_YAML}"),
    "a syntax error": ("methods: [real\n", " is not valid YAML at line 2, column 1: expected ',' or ']', but got "
                                           f"'<stream end>'; {PLAIN_YAML}"),
    "a NUL character": ("methods: [a\x00]\n", " is not valid YAML at character 11: unacceptable character #x0000: "
                                              f"special characters are not allowed; {PLAIN_YAML}"),
    "a key given twice": ("seeds: [0, 1, 2]\nmethods: [real]\nseeds: [0]\n",
                          " gives the key 'seeds' twice (again at line 3); accepted: each setting once (a later one "
                          "would silently replace the first)"),
    "an option given twice": ("gen_opt:\n  lr: 0.1\n  lr: 0.2\n", " gives the key 'lr' twice (again at line 3)"),
    "nesting ten thousand deep": ("methods: " + "[" * 10000, " is nested too deeply to be run settings; accepted: "),
    "a 5000-digit number": ("limit: " + "1" * 5000 + "\n", " holds a value that cannot be read (Exceeds the limit "
                            "(4300 digits) for integer string conversion); accepted: names, numbers of ordinary size"),
    "a 13th month": ("seeds: 2020-13-01\n", " holds a value that cannot be read (month must be in 1..12)"),
}


@pytest.mark.parametrize("content, message", HOSTILE.values(), ids=HOSTILE)
def test_a_hostile_grid_file_is_one_line_naming_the_file_the_key_and_what_is_accepted(tmp_path, content, message):
    path = tmp_path / "grid.yaml"
    path.write_text(content)
    with pytest.raises(HarnessError) as error:
        load_grid_file(path)
    assert str(error.value).startswith(f"grid file {path}{message}"), str(error.value)
    assert "\n" not in str(error.value) and len(str(error.value)) < 500
    assert not (tmp_path / "planted").exists()


HOSTILE_BYTES = {
    "a pickle": (pickle.dumps({"methods": ["real"]}),
                 " is not UTF-8 text (byte 0x80 at offset 0); accepted: a YAML or JSON text file"),
    "Latin-1 text": ("methods: [caf\u00e9]\n".encode("latin-1"),
                     " is not UTF-8 text (byte 0xe9 at offset 13); accepted: a YAML or JSON text file"),
    "over a MiB": (b"methods: [" + b"real, " * (MAX_GRID_BYTES // 6) + b"]\n",
                   " is larger than 1 MiB; accepted: a YAML or JSON file of run settings (a few lines)"),
}


@pytest.mark.parametrize("content, message", HOSTILE_BYTES.values(), ids=HOSTILE_BYTES)
def test_a_grid_file_that_is_not_small_utf8_text_is_one_line(tmp_path, content, message):
    path = tmp_path / "grid.yaml"
    path.write_bytes(content)
    with pytest.raises(HarnessError) as error:
        load_grid_file(path)
    assert str(error.value) == f"grid file {path}{message}"


@pytest.mark.parametrize("content, message", [
    ('{"seeds": [0, 1,]}', " is not valid JSON at line 1, column 17: Expecting value"),
    ('{"seeds": [0], "seeds": [1]}', " gives the key 'seeds' twice; accepted: each setting once"),
    ("[" * 100000, " is nested too deeply to be run settings"),
    ('{"methods": 3}', ": methods is 3, expected a list of method names or a comma-separated string"),
    ('{"limit": NaN}', ": limit is nan, expected an integer >= 1"),
])
def test_a_hostile_json_grid_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "grid.json"
    path.write_text(content)
    with pytest.raises(HarnessError) as error:
        load_grid_file(path)
    assert str(error.value).startswith(f"grid file {path}{message}") and "\n" not in str(error.value)


@pytest.mark.parametrize("where, message", [
    ("absent.yaml", "is unreadable: No such file or directory; accepted: a readable YAML or JSON file"),
    (".", "is unreadable: Is a directory; accepted: a readable YAML or JSON file"),
    ("/dev/zero", "is larger than 1 MiB; accepted: a YAML or JSON file of run settings (a few lines)"),
    ("/dev/null", "is empty; accepted: a mapping of run settings (e.g. 'methods: [real, noise]')"),
])
def test_a_grid_path_that_is_no_grid_file(tmp_path, where, message):
    path = tmp_path / where if not where.startswith("/") else where
    with pytest.raises(HarnessError) as error:
        load_grid_file(path)
    assert str(error.value) == f"grid file {path} {message}"


def test_run_refuses_a_bad_grid_file_in_one_line_before_the_grid(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("methods: [noise]\ntasks: digits\nseeds: [0, [1]]\n")
    assert main(["run", "--grid", str(grid), "--results", str(tmp_path / "results"), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"error: grid file {grid}: seeds[1] is [1], expected an integer in "
                                       "[0, 4294967295]\n")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("settings, expected", [
    ({"seeds": ["a"]}, "seeds must be integers"),
    ({"limit": 0}, "limit must be a positive number"),
    ({"gen_opt": 5}, "generator options must be a mapping"),
    ({"methods": 3}, "methods must be a list"),
])
def test_bad_settings(settings, expected):
    with pytest.raises(HarnessError, match=expected):
        spec_from_settings(settings)
