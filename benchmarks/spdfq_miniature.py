"""SPDFQ on the digits miniature (docs/methods.md, SPDFQ): image sources, the APA/MSR/SL ablation, block reconstruction.

    python benchmarks/spdfq_miniature.py [--seeds 0,1,2,3,4] [--parts compare,ablation,real]
        [--out results/spdfq_miniature] [--reuse-psaq results/psaq_miniature] [--skip-run]

Every cell is digits, both models, W4A3, `standard` profile, run through the harness CLI into one
results directory (resumable: a rerun with more seeds computes only the missing cells; several
invocations with different ``--parts`` may run at once). Parts:
(1) compare: SPDFQ vs PSAQ-ViT images, each with min-max and with block_recon (shared backends);
(2) ablation: SPDFQ images with none / APA / MSR / SL / all parts, min-max;
(3) real: real images with block_recon vs min-max.
``--reuse-psaq DIR`` copies PSAQ-ViT image sets already in DIR's generator cache (same options, seeds
and weights give the same cache key), so they are not synthesized again. Prints top-1 mean ± std
over seeds per model, the paired block_recon gain, and generation seconds per set.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.store.records import ResultStore  # noqa: E402

ABLATION = {  # label -> (apa, msr, sl)
    "none": (False, False, False), "APA": (True, False, False), "MSR": (False, True, False),
    "SL": (False, False, True), "all": (True, True, True),
}
PARTS = ("compare", "ablation", "real")


def harness_run(out: Path, seeds: str, methods: str, *extra: str) -> None:
    command = [sys.executable, "-m", "harness", "run", "--methods", methods, "--tasks", "digits", "--bits", "w4a3",
               "--seeds", seeds, "--results", str(out), "--no-progress", "--no-report", *extra]
    returncode = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    if returncode not in (0, 1):  # 1: some cells failed (listed above), the rest is still worth reading
        raise SystemExit(f"harness run exited with {returncode}")


def run_part(part: str, out: Path, seeds: str) -> None:
    if part == "compare":
        harness_run(out, seeds, "spdfq_minmax,psaq")
        harness_run(out, seeds, "spdfq_minmax,psaq", "--calib", "block_recon")
    elif part == "ablation":
        for apa, msr, sl in ABLATION.values():
            options = [f"spdfq.apa={apa}", f"spdfq.msr={msr}", f"spdfq.sl={sl}"]
            harness_run(out, seeds, "spdfq_minmax", *[arg for o in options for arg in ("--gen-opt", o.lower())])
    else:
        harness_run(out, seeds, "real")
        harness_run(out, seeds, "real", "--calib", "block_recon")


def reuse_psaq(source: Path, out: Path) -> None:
    target = out / "cache" / "generators" / "psaq"
    target.mkdir(parents=True, exist_ok=True)
    for entry in ResultStore(source).calibration_entries():
        if entry.meta["generator"] == "psaq" and not (target / entry.path.name).exists():
            shutil.copy2(entry.path, target / entry.path.name)


def records(out: Path, seeds: list[int]) -> pd.DataFrame:
    rows = []
    for record in ResultStore(out).records():
        if record.get("status") != "ok" or record["seed"] not in seeds:
            continue
        options = record["options"]["generator"]
        parts = tuple(options.get(name) for name in ("apa", "msr", "sl"))
        rows.append({
            "model": record["model"], "generator": record["generator"], "calibrator": record["calibrator"],
            "parts": next((k for k, v in ABLATION.items() if v == parts), "-"), "seed": record["seed"],
            "top1": record["metrics"]["top1"], "fp_top1": record["fp_metrics"]["top1"],
            "generate_s": None if record.get("generator_cache_hit") else record["timing_s"].get("generate"),
            "calibrate_s": record["timing_s"].get("calibrate"),
        })
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame, by: list[str]) -> str:
    table = frame.groupby(by)["top1"].agg(["mean", "std", "count"]).round(2)
    return table.to_string()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "spdfq_miniature")
    parser.add_argument("--reuse-psaq", type=Path, help="results directory whose cached psaq image sets to reuse")
    parser.add_argument("--skip-run", action="store_true", help="only summarize existing records")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.skip_run:
        if args.reuse_psaq:
            reuse_psaq(args.reuse_psaq, args.out)
        for part in args.parts.split(","):
            run_part(part, args.out, args.seeds)
    frame = records(args.out, seeds)
    if frame.empty:
        raise SystemExit(f"no ok records for seeds {seeds} in {args.out}")
    print(f"\nFP top-1: {frame.groupby('model')['fp_top1'].first().round(2).to_dict()}")
    full = frame[frame.parts.isin(["all", "-"])]
    print("\n(1) digits W4A3, standard profile: top-1 mean ± std over seeds (count), by image source and calibrator")
    print(summary(full, ["calibrator", "generator", "model"]))
    ablation = frame[(frame.generator == "spdfq") & (frame.calibrator == "minmax")]
    print("\n(2) SPDFQ ablation, min-max: top-1 by parts (rows: parts; both models pooled, then per model)")
    print(summary(ablation, ["parts"]))
    print(summary(ablation, ["parts", "model"]))
    paired = full.pivot_table(index=["generator", "model", "seed"], columns="calibrator", values="top1").dropna()
    paired["gain"] = paired["block_recon"] - paired["minmax"]
    print("\n(3) block_recon minus min-max on the same images, paired by seed: mean, min, wins / pairs")
    gains = paired.groupby("generator")["gain"]
    print(pd.DataFrame({"mean": gains.mean().round(2), "min": gains.min().round(2),
                        "wins": gains.apply(lambda g: f"{(g > 0).sum()}/{len(g)}")}).to_string())
    generated = frame[frame.generate_s.notna() & (frame.generator != "real")]
    print("\n(4) generation seconds per 32-image set (noisy: shared CPU)")
    print(generated.groupby(["generator", "parts"])["generate_s"].agg(["mean", "min", "max", "count"]).round(1).to_string())


if __name__ == "__main__":
    main()
