"""``--help`` answers without loading the heavy libraries (issue 34, item 2): the parser is built from light
modules only. Checked in a fresh process, since this test session has torch loaded already; how long it
takes is measured by benchmarks/cli_latency.py, not asserted here (timings vary by machine)."""
from __future__ import annotations

import json
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
