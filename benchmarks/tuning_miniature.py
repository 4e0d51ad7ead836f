"""Calibration only against fine-tuning (``lsq_kd``) on the digits miniature (docs/miniature.md, Fine-tuning).

    python benchmarks/tuning_miniature.py [--data noise,psaq,real] [--seeds 0,1,2,3,4] [--out results/tuning_miniature]
                                          [--threads N]

Runs ``--data GENERATORS --calib minmax --tune none,lsq_kd`` through the harness CLI on digits, both models,
W4A4 and W4A3, one seed at a time (resumable: a rerun computes only missing cells). ``lsq_kd`` runs at its
defaults (MaskAQ's schedule: 200 epochs over the cell's 32 calibration images, batch 16). Then prints from the
records: (1) top-1 mean ± std over seeds per model, bits, generator and protocol; (2) the gain of fine-tuning
per generator, tuned minus calibrated, paired on seeds, with the report's significance test; (3) seconds per
cell by stage and protocol (a cached generator set counts with the seconds it took when it was made).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.store.records import ResultStore  # noqa: E402
from reports.significance import compare  # noqa: E402

BITS = ("w4a4", "w4a3")
TUNER = "lsq_kd"


def run_seed(out: Path, data: str, seed: int, threads: int | None) -> None:
    command = [sys.executable, "-m", "harness", "run", "--data", data, "--calib", "minmax", "--tune", f"none,{TUNER}",
               "--tasks", "digits", "--bits", ",".join(BITS), "--seeds", str(seed), "--results", str(out),
               "--no-progress", "--no-report", *(["--threads", str(threads)] if threads else [])]
    returncode = subprocess.run(command, cwd=REPO).returncode
    if returncode not in (0, 1):  # 1: some cells failed (listed above), the rest is still worth reading
        raise SystemExit(f"harness run exited with {returncode}")


def records(out: Path, generators: list[str], seeds: list[int]) -> pd.DataFrame:
    rows = []
    for record in ResultStore(out).records():
        if (record.get("status") != "ok" or record["seed"] not in seeds or record["generator"] not in generators
                or record["calibrator"] != "minmax" or record["bits"] not in BITS):
            continue
        timing = record["timing_s"]
        rows.append({"model": record["model"], "bits": record["bits"], "generator": record["generator"],
                     "protocol": f"fine-tuned ({record['tuner']})" if record.get("tuner") else "calibration only",
                     "seed": record["seed"], "top1": record["metrics"]["top1"], "fp_top1": record["fp_metrics"]["top1"],
                     **{f"{stage}_s": timing.get(stage, 0.0) for stage in ("generate", "calibrate", "tune", "evaluate")}})
    return pd.DataFrame(rows)


def gains(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (model, bits, generator), group in frame.groupby(["model", "bits", "generator"]):
        by_protocol = {protocol: dict(zip(part["seed"], part["top1"])) for protocol, part in group.groupby("protocol")}
        tuned, calibrated = by_protocol.get(f"fine-tuned ({TUNER})"), by_protocol.get("calibration only")
        if tuned and calibrated:
            result = compare(tuned, calibrated, "calibration only")
            rows.append({"model": model, "bits": bits, "generator": generator, "gain": round(result.difference, 2),
                         "p": None if result.p_value is None else round(result.p_value, 4), "seeds": result.seeds,
                         "mark": "?" if result.p_value is None else "*" if result.significant else "≈"})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="noise,psaq,real", help="generators, comma-separated")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "tuning_miniature")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: one per core)")
    parser.add_argument("--skip-run", action="store_true", help="only summarize existing records")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.skip_run:
        for seed in seeds:
            run_seed(args.out, args.data, seed, args.threads)
    frame = records(args.out, args.data.split(","), seeds)
    keys = ["model", "bits", "generator", "protocol"]
    print("\n(1) digits, calibrator minmax: top-1 mean ± std over seeds (n)")
    table = frame.groupby(keys)["top1"].agg(["mean", "std", "count"]).round(2)
    table["fp"] = frame.groupby(keys)["fp_top1"].first().round(2)
    print(table.to_string())
    print(f"\n(2) gain of fine-tuning ({TUNER} - calibration only), top-1 points, paired on seeds "
          "(* p < 0.05, ≈ within seed noise)")
    print(gains(frame).to_string(index=False))
    print("\n(3) seconds per cell (mean over cells)")
    print(frame.groupby("protocol")[["generate_s", "calibrate_s", "tune_s", "evaluate_s"]].mean().round(2).to_string())


if __name__ == "__main__":
    main()
