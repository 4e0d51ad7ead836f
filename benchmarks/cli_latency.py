"""How long the CLI takes to answer: ``--help`` of every command (target < 1 s, torch not loaded) and
``list`` (target < 2 s), each the minimum over fresh ``python -m harness`` processes (issue 34, items 1 and 2).

The wall time is the whole process as a user waits for it (interpreter start included); one more run
per command, through a small wrapper, reports which heavy libraries it loaded (``sys.modules`` after
the command returned or exited). Help must load none: the parser is built from light modules only
(the executor names live in ``harness/run/executor_names.py``, not beside the backends, which import
the grid, the quantizer and with it torch and timm).

Measured on the 2-core development machine while a CI run shared it (load average 4 to 7; minimum of 5
runs, `list` of 3; "before" is commit 7491e8b):

    command                                       before (s)   after (s)   heavy modules after
    --help, and --help of each of the 6 commands  5.3 to 8.5   0.05        none
    list                                          7.4          7.4         torch, timm, torchvision, sklearn,
                                                                           scipy, pandas, numpy

On the same machine `python -c "import torch"` took 2.4 s, adding timm 2.6 s more and scikit-learn's
datasets 2.2 s more: `list` is those three imports and little else.

Before, every ``--help`` imported ``harness.run.executors`` for the ``--executor`` choices, and with it
torch and timm.

``list`` is measured twice: cold, each process with an empty listing cache (every plugin imported:
torch, timm, ...), and warm, from the cache the first ``list`` (or any ``run``) wrote for this checkout
(harness/entry/listing.py: the listing beside a digest of the plugins' and the core's source; no plugin
imported). Measured on a 2-core machine shared with two other jobs (load average 2.4 to 3.7;
``python -c "import torch"`` alone 4.6 s; two sessions of the script, their ranges):

    command                                       seconds        heavy modules
    --help, and --help of each of the 7 commands  0.05 to 0.13   none
    list, cold (no listing cache)                 9.84 to 9.85   torch, timm, torchvision, numpy (and, with the
                                                                 plugins of the second session, sklearn, scipy,
                                                                 pandas)
    list, warm (cache of this checkout)           0.16 to 0.19   none

Any edit under harness/, methods/ or tasks/ (a new plugin folder included), another installed
distribution or another interpreter makes the next ``list`` cold once.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

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


@contextlib.contextmanager
def listing_cache(cache: Path | None) -> Iterator[Path]:
    """``cache``, or an empty folder removed afterwards."""
    if cache is not None:
        yield cache
        return
    with tempfile.TemporaryDirectory(prefix="cli_latency_") as folder:
        yield Path(folder)


def wall_seconds(args: list[str], cache: Path | None = None) -> float:
    """One fresh ``python -m harness ARGS``; ``cache``: the listing cache folder it uses, else an empty one."""
    with listing_cache(cache) as folder:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "harness", *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "DFQ_HARNESS_CACHE": str(folder)})
        return time.perf_counter() - start


def heavy_modules(args: list[str], cache: Path | None = None) -> list[str]:
    """The heavy libraries ``python -m harness ARGS`` loads."""
    with listing_cache(cache) as folder:
        result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)], check=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "DFQ_HARNESS_CACHE": str(folder)})
    line = [line for line in result.stderr.splitlines() if line.startswith("HEAVY ")][-1]
    return json.loads(line.removeprefix("HEAVY "))


def measure(args: list[str], runs: int, cache: Path | None = None, label: str = "") -> dict:
    """Minimum over ``runs`` processes; without ``cache`` each starts from an empty listing cache (cold)."""
    return {"command": " ".join(args) + label, "seconds": min(wall_seconds(args, cache) for _ in range(runs)),
            "heavy": heavy_modules(args, cache)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per --help (the minimum is kept)")
    parser.add_argument("--list-runs", type=int, default=3, help="fresh processes for `list`")
    options = parser.parse_args(argv)
    figures = [measure(["--help"], options.runs)]
    figures += [measure([command, "--help"], options.runs) for command in COMMANDS]
    figures.append(measure(["list"], options.list_runs, label=" (cold: no listing cache)"))
    with listing_cache(None) as warm:
        wall_seconds(["list"], warm)  # writes the listing cache
        figures.append(measure(["list"], options.runs, warm, label=" (warm: cache of this checkout)"))
    width = max(len(row["command"]) for row in figures)
    for row in figures:
        target = 2.0 if row["command"].startswith("list") else 1.0
        verdict = "ok" if row["seconds"] < target else f"above {target:g} s"
        print(f"{row['command'].ljust(width)}  {row['seconds']:.2f} s ({verdict})  "
              f"heavy modules: {', '.join(row['heavy']) or 'none'}")
    return figures


if __name__ == "__main__":
    main()
