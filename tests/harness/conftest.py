"""What the adversarial tests start from: one finished digits cell, computed once per session, copied per test."""
import shutil
from pathlib import Path

import pytest

from harness.entry.cli import main

FINISHED_CELL = ["--methods", "noise", "--tasks", "digits", "--models", "digits_vit_seed0", "--seeds", "0",
                 "--limit", "20", "--bits", "w4a8", "--no-progress", "--no-report"]


@pytest.fixture(scope="session")
def finished_folder(tmp_path_factory) -> Path:
    """One finished cell (noise, W4A8): its record, its FP metric and its cached calibration set."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["run", *FINISHED_CELL, "--results", str(out)]) == 0
    return out


@pytest.fixture
def results(finished_folder, tmp_path) -> Path:
    """Each test's own copy of the finished folder, to alter as it pleases."""
    return Path(shutil.copytree(finished_folder, tmp_path / "results"))
