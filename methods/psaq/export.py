"""``python -m methods.psaq.export CACHE_FILE OUT.png``: a cached calibration set as a PNG grid.

CACHE_FILE is a generator cache entry of the runner (``results/cache/generators/psaq/<key>.safetensors``);
its images are de-normalized with the mean/std of the prior stored beside them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.api import HarnessError
from harness.api.data import read_calibration
from harness.api.synthesis import save_image_grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m methods.psaq.export", description=__doc__.splitlines()[0])
    parser.add_argument("cache_file", type=Path, help="a .safetensors entry of results/cache/generators/<generator>/")
    parser.add_argument("out", type=Path, help="PNG file to write")
    parser.add_argument("--nrow", type=int, default=8, help="images per row")
    parser.add_argument("--scale", type=int, default=1, help="enlarge every image by this factor")
    args = parser.parse_args(argv)
    entry = read_calibration(args.cache_file)
    if entry is None:
        raise HarnessError(f"{args.cache_file} is not a calibration-set cache entry written by the harness")
    path = save_image_grid(entry.calibration.images, entry.prior, args.out, args.nrow, args.scale)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
