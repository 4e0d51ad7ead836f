"""(b) Wall time of a `real` x digits grid over three bit widths over one bit width (target <= 1.3).

Each grid runs in a fresh results directory, so both pay for the FP metric and the calibration
images once; the extra bit widths cost only calibration and evaluation. The digits models must
already be cached (any earlier run trains them).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time


def grid_seconds(bits: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "harness", "run", "--methods", "real", "--tasks", "digits",
                        "--bits", bits, "--results", out, "--no-progress"], check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    grid_seconds("w8a8")  # make sure the digits models are trained and cached first
    one = min(grid_seconds("w8a8") for _ in range(3))
    three = min(grid_seconds("w8a8,w4a4,w4a3") for _ in range(3))
    print(f"real x digits: 1 bit width {one:.2f} s, 3 bit widths {three:.2f} s, ratio {three / one:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
