"""How long the CLI takes to answer: ``--help`` of every command (target < 1 s, torch not loaded) and
``list`` (target < 2 s), each the minimum over fresh ``python -m harness`` processes (issue 34, item 2).

The wall time is the whole process as a user waits for it (interpreter start included); one more run
per command, through a small wrapper, reports which heavy libraries it loaded (``sys.modules`` after
the command returned or exited). Help must load none: the parser is built from light modules only
(the executor names live in ``harness/executor_names.py``, not beside the backends, which import
the grid, the quantizer and with it torch and timm).

Measured on the 2-core development machine while a CI run shared it (load average 4 to 7; minimum of 5
runs, `list` of 3; "before" is commit 7491e8b):

    command                                       before (s)   after (s)   heavy modules after
    --help, and --help of each of the 6 commands  5.3 to 8.5   0.05        none
    list                                          7.4          7.4         torch, timm, torchvision, sklearn,
                                                                           scipy, pandas, numpy

On the same machine `python -c "import torch"` took 2.4 s, adding timm 2.6 s more and scikit-learn's
datasets 2.2 s more: `list` is those three imports and little else.

Before, every ``--help`` imported ``harness.executors`` for the ``--executor`` choices, and with it
torch and timm. ``list`` stays above its 2 s target: plugins register on import, and every plugin
imports ``harness.api`` (torch; and through the conformance kit the runner, the grid and the quantizer:
timm, whose import loads torchvision's feature extraction and torch._dynamo), and the digits task
imports timm and scikit-learn's datasets at module level. Each of these alone is above 1 s here;
they go only with a plugin API that loads no runner (issue 34, item 4) together with plugins that import
timm and scikit-learn when a model or a data set is built, not at registration.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

COMMANDS = ("run", "list", "report", "export", "new-method", "new-tuner", "new-task")
HEAVY = ("torch", "timm", "pandas", "numpy", "sklearn", "scipy", "torchvision", "mmengine", "mmdet", "mmseg")

# runs ``python -m harness ARGS`` as __main__ does, then names the heavy libraries it loaded (on stderr,
# after the command's own output, which goes to /dev/null)
PROBE = """
import json, runpy, sys
heavy = set(json.loads(sys.argv[2]))
sys.argv = ["harness", *json.loads(sys.argv[1])]
try:
    runpy.run_module("harness", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
sys.stdout.flush()
loaded = sorted({name.split(".")[0] for name in sys.modules} & heavy)
print("\\nHEAVY " + json.dumps(loaded), file=sys.stderr)
"""


def wall_seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy_modules(args: list[str]) -> list[str]:
    """The heavy libraries ``python -m harness ARGS`` loads."""
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)], check=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = [line for line in result.stderr.splitlines() if line.startswith("HEAVY ")][-1]
    return json.loads(line.removeprefix("HEAVY "))


def measure(args: list[str], runs: int) -> dict:
    return {"command": " ".join(args), "seconds": min(wall_seconds(args) for _ in range(runs)),
            "heavy": heavy_modules(args)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per --help (the minimum is kept)")
    parser.add_argument("--list-runs", type=int, default=3, help="fresh processes for `list`")
    options = parser.parse_args(argv)
    figures = [measure(["--help"], options.runs)]
    figures += [measure([command, "--help"], options.runs) for command in COMMANDS]
    figures.append(measure(["list"], options.list_runs))
    width = max(len(row["command"]) for row in figures)
    for row in figures:
        target = 2.0 if row["command"] == "list" else 1.0
        verdict = "ok" if row["seconds"] < target else f"above {target:g} s"
        print(f"{row['command'].ljust(width)}  {row['seconds']:.2f} s ({verdict})  "
              f"heavy modules: {', '.join(row['heavy']) or 'none'}")
    return figures


if __name__ == "__main__":
    main()
