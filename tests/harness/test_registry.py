import sys
import textwrap

import pytest

from harness.errors import HarnessError
from harness.plugin import discovery
from harness.plugin.registry import CALIBRATORS, GENERATORS, METHODS, MODELS, TASKS, Registry
from harness.store.paths import PROJECT_ROOT


def test_plugin_folders_are_discovered():
    assert {"real", "noise"} <= set(METHODS.names())
    assert {"real", "noise"} <= set(GENERATORS.names())
    assert {"minmax", "percentile", "omse"} <= set(CALIBRATORS.names())
    assert "digits" in TASKS.names()
    assert MODELS.get("digits_vit_seed0").task == "digits"


def test_unknown_name_lists_known_names_and_a_close_match():
    with pytest.raises(HarnessError) as error:
        METHODS.get("nosie")
    message = str(error.value)
    assert "unknown method 'nosie'" in message and "did you mean 'noise'" in message
    assert "known methods:" in message and "real" in message


def test_unknown_name_without_close_match_has_no_guess():
    with pytest.raises(HarnessError) as error:
        TASKS.get("zzzzzz")
    assert "did you mean" not in str(error.value) and "digits" in str(error.value)


def test_duplicate_registration_is_refused():
    local = Registry("widget", object, of_classes=False)
    local.add("a", object())
    with pytest.raises(HarnessError, match="registered twice"):
        local.add("a", object())


class _NotACalibrator:
    pass


@pytest.mark.parametrize("registry, entry, message", [
    (CALIBRATORS, _NotACalibrator, "calibrator 'wrong' cannot be registered: class test_registry._NotACalibrator is "
                                   "not a subclass of Calibrator (docs/plugins.md)"),
    (GENERATORS, CALIBRATORS.get("minmax"), "generator 'wrong' cannot be registered: class "
                                            "harness.plugin.calibrators.MinMaxCalibrator is not a subclass of Generator"),
    (TASKS, TASKS.get("digits")(), "task 'wrong' cannot be registered: an instance of tasks.digits.DigitsTask is not a "
                                   "subclass of Task"),
    (METHODS, {"generator": "noise", "calibrator": "minmax"}, "method 'wrong' cannot be registered: dict "
                                                              "{'generator': 'noise', 'calibrator': 'minmax'} is not a MethodSpec"),
    (MODELS, "digits", "model 'wrong' cannot be registered: str 'digits' is not a ModelEntry"),
])
def test_a_wrong_plugin_type_is_refused_at_registration(registry, entry, message):
    """An instance where a class is expected, another base's class, a dict for a spec: refused before it is kept."""
    with pytest.raises(HarnessError) as error:
        registry.add("wrong", entry)
    assert str(error.value).startswith(message)
    assert "wrong" not in registry


def test_a_plugin_registering_a_wrong_type_names_itself(outside_plugin):
    outside_plugin("mistyped_dfq_plugin",
                   "from harness.api import TUNERS\n@TUNERS.register('mistyped')\ndef tune(model):\n    return model\n")
    with pytest.raises(HarnessError, match=r"^tuner 'mistyped' cannot be registered: function "
                                           r"mistyped_dfq_plugin\.tune is not a subclass of Tuner"):
        discovery.discover_plugins()


def test_entry_point_plugins_are_discovered(outside_plugin):
    outside_plugin("outside_dfq_plugin", textwrap.dedent("""
        from harness.plugin.method import MethodSpec
        from harness.plugin.registry import METHODS
        METHODS.add("outside_method", MethodSpec(generator="noise", calibrator="omse"))
    """))
    try:
        assert METHODS.get("outside_method").calibrator == "omse"
    finally:
        METHODS._entries.pop("outside_method", None)


def test_broken_plugin_names_itself(outside_plugin):
    outside_plugin("broken_dfq_plugin", "raise RuntimeError('boom')\n", "tasks")
    with pytest.raises(HarnessError, match="plugin 'broken_dfq_plugin' failed to load: RuntimeError: boom"):
        discovery.discover_plugins()


def test_a_foreign_package_named_tasks_is_one_clear_error(tmp_path):
    """Another installed ``tasks`` package first on sys.path would replace the harness's task folder."""
    import os
    import subprocess

    repository = PROJECT_ROOT
    (tmp_path / "elsewhere" / "tasks").mkdir(parents=True)
    (tmp_path / "elsewhere" / "tasks" / "__init__.py").write_text("")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "elsewhere"), str(repository)])}
    completed = subprocess.run([sys.executable, "-m", "harness", "list", "tasks"], cwd=tmp_path, env=environment,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2
    assert f"the package 'tasks' is imported from {tmp_path / 'elsewhere' / 'tasks'}, not from DFQ Harness's " \
           f"{repository / 'tasks'}" in completed.stderr
    assert "Traceback" not in completed.stderr
    # the harness's own folders pass the check
    discovery.check_sibling_packages()
