"""The benchmarks that tests keep working, in their quick modes (figures are printed, never asserted)."""
from __future__ import annotations

import math

from PIL import Image

from benchmark_scripts import load_benchmark


def test_imagenet_throughput_quick(tmp_path, capsys):
    throughput = load_benchmark("imagenet_throughput")
    figures = throughput.main(["--quick", "--workdir", str(tmp_path), "--workers", "0"])
    val = tmp_path / "imagenet" / "val"
    jpegs = sorted(val.glob("*/*.JPEG"))
    assert len([folder for folder in val.iterdir() if folder.is_dir()]) == 1000
    assert len(jpegs) == figures["images"] == 24
    assert all(40 <= min(Image.open(path).size) < 80 for path in jpegs)
    rates = [figures[key] for key in ("decode_transform", "cache_build", "cache_hit")]
    rates += [value for row in figures["models"].values() for value in row.values()]
    assert len(rates) == 3 + 2 * 5 and all(math.isfinite(value) and value > 0 for value in rates)
    assert figures["one_entry_for_all_models"]
    for name in throughput.MODELS:  # the first cell built its entry, the later cell read it
        assert len(list((tmp_path / f"harness_cache_{name}" / "imagenet_eval").glob("*/images.npy"))) == 1
    printed = capsys.readouterr().out
    assert all(name in printed for name in throughput.MODELS) and "cache hit (every later cell)" in printed
