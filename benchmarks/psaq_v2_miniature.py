"""PSAQ-ViT V2 vs PSAQ-ViT on the digits miniature (docs/methods.md, PSAQ-ViT V2): top-1 and cost.

    python benchmarks/psaq_v2_miniature.py [--seeds 0,1,2,3,4] [--out results/psaq_v2_miniature] [--threads N]

Runs ``psaq`` (its default calibrator, min-max) and ``psaq_v2`` (generator ``psaq_v2_init`` +
calibrator ``minmax`` + tuner ``psaq_v2``) through the harness CLI on digits, both models, `standard` profile, W4A3
and W4A4, one seed at a time (resumable: a rerun computes only missing cells, so two instances
with disjoint ``--seeds`` may share ``--out``). Then prints from the records: (1) top-1 mean ± std
over seeds per model, bits and method; (2) the paired per-seed difference V2 - V1; (3) the cost
ratio V2/V1 of generate + calibrate seconds per cell (a cached generator set counts with the
seconds it took when it was made, so both methods pay their synthesis in every cell).
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

BITS = ("w4a3", "w4a4")
METHODS = ("psaq", "psaq_v2")


def run_seed(out: Path, seed: int, threads: int | None) -> None:
    command = [sys.executable, "-m", "harness", "run", "--methods", ",".join(METHODS), "--tasks", "digits",
               "--bits", ",".join(BITS), "--seeds", str(seed), "--results", str(out), "--no-progress", "--no-report"]
    if threads:
        command += ["--threads", str(threads)]
    returncode = subprocess.run(command, cwd=REPO).returncode
    if returncode not in (0, 1):  # 1: some cells failed (listed above), the rest is still worth reading
        raise SystemExit(f"harness run exited with {returncode}")


def records(out: Path, seeds: list[int]) -> pd.DataFrame:
    rows = []
    for record in ResultStore(out).records():
        if record.get("status") == "ok" and record["seed"] in seeds and record["method"] in METHODS:
            timing = record["timing_s"]
            rows.append({"model": record["model"], "bits": record["bits"], "method": record["method"],
                         "calibrator": record["calibrator"] + (f" -> {record['tuner']}" if record.get("tuner") else ""),
                         "seed": record["seed"],
                         "top1": record["metrics"]["top1"], "fp_top1": record["fp_metrics"]["top1"],
                         "cost_s": timing.get("generate", 0.0) + timing["calibrate"] + timing.get("tune", 0.0)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "psaq_v2_miniature")
    parser.add_argument("--threads", type=int, help="torch threads per run (two instances: 1 each)")
    parser.add_argument("--skip-run", action="store_true", help="only summarize existing records")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.skip_run:
        for seed in seeds:
            run_seed(args.out, seed, args.threads)
    frame = records(args.out, seeds)
    keys = ["model", "bits", "method"]
    print("\n(1) digits, standard profile: top-1 mean ± std over seeds (n); calibrators: "
          + ", ".join(sorted({f"{m} -> {c}" for m, c in zip(frame.method, frame.calibrator)})))
    table = frame.groupby(keys)["top1"].agg(["mean", "std", "count"]).round(2)
    table["fp"] = frame.groupby(keys)["fp_top1"].first().round(2)
    print(table.to_string())
    paired = frame.pivot_table(index=["model", "bits", "seed"], columns="method", values="top1").dropna()
    difference = (paired["psaq_v2"] - paired["psaq"]).groupby(["model", "bits"]).agg(["mean", "std", "count"])
    print("\n(2) paired difference psaq_v2 - psaq, top-1 points")
    print(difference.round(2).to_string())
    print(f"overall: {(paired['psaq_v2'] - paired['psaq']).mean():+.2f} points over {len(paired)} pairs "
          "(target: >= +2)")
    cost = frame.groupby("method")["cost_s"].agg(["mean", "min", "max", "count"]).round(1)
    print("\n(3) generate + calibrate seconds per cell")
    print(cost.to_string())
    print(f"cost ratio psaq_v2 / psaq: {cost.loc['psaq_v2', 'mean'] / cost.loc['psaq', 'mean']:.2f} "
          "(docs/methods.md, PSAQ-ViT V2: about 2-4x)")


if __name__ == "__main__":
    main()
