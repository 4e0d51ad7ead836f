"""Ranking-loss PTQ on the digits miniature (docs/methods.md, Ranking-loss PTQ): ``ranking`` vs ``real`` with min-max and OMSE.

Runs the harness CLI into ``results/ranking_miniature`` (resumable: finished cells are skipped),
then prints mean ± std top-1 over 5 calibration seeds per model and method at W4A3 (`standard`
profile, real images), the calibration time per cell, and one mixed-precision (``mp6``) cell's
bit allocation beside uniform W6A6. Its target: ranking >= real/min-max + 3 points.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from harness.store.records import ResultStore
from reports.aggregate import records_frame

OUT = Path("results/ranking_miniature")
SEEDS = "0,1,2,3,4"
TARGET_POINTS = 3.0


def harness_run(*args: str) -> None:
    command = [sys.executable, "-m", "harness", "run", "--tasks", "digits", "--results", str(OUT), "--no-progress", *args]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, capture_output=True)


def main() -> None:
    harness_run("--methods", "real,ranking", "--bits", "w4a3", "--seeds", SEEDS)
    harness_run("--methods", "real", "--calib", "omse", "--bits", "w4a3", "--seeds", SEEDS)
    harness_run("--methods", "ranking", "--bits", "mp6,w6a6", "--seeds", "0")
    harness_run("--methods", "real", "--bits", "w6a6", "--seeds", "0")
    records = list(ResultStore(OUT).records())
    frame = records_frame(records)

    low = frame[frame.bits == "w4a3"]
    table = low.groupby(["model", "label"]).agg(
        top1_mean=("metric.top1", "mean"), top1_std=("metric.top1", "std"), seeds=("seed", "count"),
        calibrate_s=("time.calibrate", "mean"), fp_top1=("fp.top1", "first"))
    pd.set_option("display.width", 160)
    print("\nW4A3, standard profile, 32 real calibration images, top-1 % over seeds")
    print(table.round(2).to_string())
    overall = low.groupby("label")["metric.top1"].mean()
    gain = overall["ranking"] - overall["real"]
    print(f"\nmean over both models: {overall.round(2).to_dict()}")
    print(f"ranking - real/min-max = {gain:+.2f} points (target >= +{TARGET_POINTS:.0f}): "
          f"{'met' if gain >= TARGET_POINTS else 'not met'}")

    print("\nseed 0, 6-bit: uniform vs mixed precision (top-1 %)")
    print(frame[frame.bits.isin(["w6a6", "mp6a6"])].pivot_table(index="model", columns=["label", "bits"],
                                                                values="metric.top1").round(2).to_string())
    for record in records:
        if record.get("status") == "ok" and record["bits"].startswith("mp"):
            mixed = record["calibrator_info"]["mixed_precision"]
            print(f"\nmp6 allocation, {record['model']}: average {mixed['average_bits']} bits "
                  f"(budget {mixed['budget']}, weighted by {mixed['weighting']}; plain layer mean "
                  f"{mixed['layer_average_bits']})")
            allocation = pd.DataFrame({"bits": mixed["allocation"], "nuclear_norm": mixed["sensitivity"]})
            print(allocation.to_string())


if __name__ == "__main__":
    main()
