import sys
import textwrap

import pytest

from harness import discovery
from harness.errors import HarnessError
from harness.registry import CALIBRATORS, GENERATORS, METHODS, MODELS, TASKS, Registry


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
    local = Registry("widget")
    local.add("a", object())
    with pytest.raises(HarnessError, match="registered twice"):
        local.add("a", object())


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    (tmp_path / "outside_dfq_plugin.py").write_text(textwrap.dedent("""
        from harness.method import MethodSpec
        from harness.registry import METHODS
        METHODS.add("outside_method", MethodSpec(generator="noise", calibrator="omse"))
    """))
    dist = tmp_path / "outside_dfq_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-dfq-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dfq_harness.methods]\noutside = outside_dfq_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(discovery, "_discovered", False)
    try:
        assert METHODS.get("outside_method").calibrator == "omse"
    finally:
        METHODS._entries.pop("outside_method", None)
        sys.modules.pop("outside_dfq_plugin", None)


def test_broken_plugin_names_itself(tmp_path, monkeypatch):
    (tmp_path / "broken_dfq_plugin.py").write_text("raise RuntimeError('boom')\n")
    dist = tmp_path / "broken_dfq_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-dfq-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dfq_harness.tasks]\nbroken = broken_dfq_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(discovery, "_discovered", False)
    with pytest.raises(HarnessError, match="plugin 'broken_dfq_plugin' failed to load: RuntimeError: boom"):
        discovery.discover_plugins()


def test_a_foreign_package_named_tasks_is_one_clear_error(tmp_path):
    """Another installed ``tasks`` package first on sys.path would replace the harness's task folder."""
    import os
    import subprocess
    from pathlib import Path

    repository = Path(discovery.__file__).resolve().parents[1]
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
