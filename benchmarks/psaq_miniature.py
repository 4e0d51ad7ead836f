"""PSAQ-ViT on the digits miniature (docs/miniature.md, PSAQ-ViT at W4A3): patch-similarity entropy and low-bit top-1.

    python benchmarks/psaq_miniature.py [--seeds 0,1,2,3,4] [--out results/psaq_miniature] [--threads N]

Runs psaq, psaq without its PSE term (``pse_weight=0``), noise and real through the harness CLI
(digits, standard profile, W4A3, OMSE), and psaq, noise and real as PSAQ-ViT's code quantizes
(``psaq`` profile, W4A4 and W4A3, each method's min-max calibrator); resumable, so a rerun
computes only missing cells. Then prints from the records and the generator cache:
(1) the mean patch-similarity entropy per block of every cached calibration set, by generator;
(2) standard-profile top-1 mean ± std over seeds per model; (3) psaq generation seconds per set;
(4) psaq-profile top-1 mean ± std over seeds per model and bit width.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.plugin.registry import TASKS  # noqa: E402
from harness.priors.patch_similarity import block_entropies  # noqa: E402
from harness.run.grid import code_differences  # noqa: E402
from harness.store.records import ResultStore  # noqa: E402


PSAQ_PROFILE_BITS = ("w4a4", "w4a3")


def run_grid(out: Path, seeds: str, threads: int | None, recompute_stale: bool) -> None:
    base = [sys.executable, "-m", "harness", "run", "--tasks", "digits", "--seeds", seeds,
            "--results", str(out), "--no-progress", "--no-report"]
    if threads:
        base += ["--threads", str(threads)]
    if recompute_stale:
        base.append("--recompute-stale")
    standard = ["--bits", "w4a3", "--calib", "omse"]
    for extra in (standard + ["--methods", "psaq,noise,real"],
                  standard + ["--methods", "psaq", "--gen-opt", "psaq.pse_weight=0"],
                  ["--methods", "psaq,noise,real", "--profile", "psaq", "--bits", ",".join(PSAQ_PROFILE_BITS)]):
        returncode = subprocess.run(base + extra, cwd=REPO).returncode
        if returncode not in (0, 1):  # 1: some cells failed (listed above), the rest is still worth reading
            raise SystemExit(f"harness run exited with {returncode}")


def variant(generator: str, options: dict) -> str:
    return f"{generator} (no PSE)" if options.get("pse_weight") == 0 else generator


def entropy_table(out: Path) -> pd.DataFrame:
    """Rows (model, generator, seed), one column per block: what the psaq prior optimizes."""
    task, models, rows = TASKS.get("digits")(), {}, []
    for entry in ResultStore(out).calibration_entries():
        meta = entry.meta
        if meta["model"] not in models:
            models[meta["model"]] = task.load_model(meta["model"]).eval()
        values = block_entropies(models[meta["model"]], entry.calibration.images)
        rows.append({"model": meta["model"], "generator": variant(meta["generator"], meta["options"]),
                     "seed": meta["seed"],
                     **{f"block {i}": v for i, v in enumerate(values)}})
    return pd.DataFrame(rows)


def records(out: Path, seeds: list[int]) -> pd.DataFrame:
    rows = []
    for record in ResultStore(out).records():
        if record.get("status") == "ok" and record["seed"] in seeds:
            rows.append({"model": record["model"], "seed": record["seed"], "bits": record["bits"],
                         "profile": record["options"]["quant"]["profile"], "calibrator": record["calibrator"],
                         "generator": variant(record["generator"], record["options"]["generator"]),
                         "top1": record["metrics"]["top1"], "fp_top1": record["fp_metrics"]["top1"],
                         "current": not code_differences(record),  # made by this checkout's code
                         "generate_s": None if record.get("generator_cache_hit") else record["timing_s"]["generate"]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "psaq_miniature")
    parser.add_argument("--threads", type=int, help="torch threads of the harness runs")
    parser.add_argument("--skip-run", action="store_true", help="only summarize existing records")
    parser.add_argument("--recompute-stale", action="store_true",
                        help="recompute the cells and calibration sets that other code made (docs/results.md)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.skip_run:
        run_grid(args.out, args.seeds, args.threads, args.recompute_stale)
    torch.set_num_threads(2)
    entropies = entropy_table(args.out)
    entropies = entropies[entropies.seed.isin(seeds)]
    blocks = [c for c in entropies.columns if c.startswith("block")]
    print("\n(1) patch-similarity entropy per block, mean over seeds (n sets)")
    summary = entropies.groupby(["model", "generator"])[blocks].mean().round(3)
    summary["n"] = entropies.groupby(["model", "generator"]).size()
    print(summary.to_string())
    every = records(args.out, seeds)
    frame = every[every.current]  # records of older code stay in the folder; they are never averaged in
    standard = frame[(frame.profile == "standard") & (frame.bits == "w4a3") & (frame.calibrator == "omse")]
    print("\n(2) digits W4A3, OMSE, standard profile: top-1 mean ± std over seeds (n)")
    table = standard.groupby(["model", "generator"])["top1"].agg(["mean", "std", "count"]).round(2)
    table["fp"] = standard.groupby(["model", "generator"])["fp_top1"].first()
    print(table.to_string())
    generated = every[(every.generator == "psaq") & every.generate_s.notna()].generate_s  # sets are code-independent of the quantizer
    if len(generated):
        print(f"\n(3) psaq generation: {generated.mean():.1f} s per 32-image set "
              f"(min {generated.min():.1f}, max {generated.max():.1f}, n {len(generated)})")
    else:
        print("\n(3) psaq generation: every set came from the cache")
    psaq = frame[(frame.profile == "psaq") & frame.bits.isin(PSAQ_PROFILE_BITS) & (frame.calibrator == "minmax")]
    print("\n(4) digits, psaq profile, min-max (PSAQ-ViT's pipeline): top-1 mean ± std over seeds (n)")
    summary = psaq.groupby(["model", "generator", "bits"])["top1"].agg(["mean", "std", "count"])
    cells = summary.apply(lambda row: f"{row['mean']:.2f} ± {row['std']:.2f} ({int(row['count'])})", axis=1)
    print(cells.unstack("bits").to_string())


if __name__ == "__main__":
    main()
