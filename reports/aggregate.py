"""Records -> pandas: one row per finished cell, and the leaderboard pivot (mean over seeds)."""
from __future__ import annotations

from typing import Any, Iterable

import pandas as pd


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Flatten ``ok`` records: identity columns plus one ``metric.<name>`` column per metric."""
    rows = []
    for record in records:
        if record.get("status") != "ok":
            continue
        row = {key: record.get(key) for key in ("cell_id", "label", "method", "generator", "calibrator",
                                                  "task", "model", "bits", "seed")}
        row["profile"] = record.get("options", {}).get("quant", {}).get("profile")
        row.update({f"metric.{k}": v for k, v in record.get("metrics", {}).items()})
        row.update({f"fp.{k}": v for k, v in record.get("fp_metrics", {}).items()})
        row.update({f"time.{k}": v for k, v in record.get("timing_s", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def primary_metric(frame: pd.DataFrame) -> str:
    """``metric.top1`` when present, else the first metric column (box AP, mIoU, ...)."""
    columns = [c for c in frame.columns if c.startswith("metric.")]
    return "metric.top1" if "metric.top1" in columns else columns[0]


def leaderboard(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows: (task, model, label); columns: bits; cells: 'mean ± std (n)' over seeds."""
    grouped = frame.groupby(["task", "model", "label", "bits"])[metric].agg(["mean", "std", "count"])
    text = grouped.apply(lambda r: f"{r['mean']:.2f} ± {0.0 if pd.isna(r['std']) else r['std']:.2f} ({int(r['count'])})",
                         axis=1)
    table = text.unstack("bits")
    return table[sorted(table.columns, key=_bits_order)].fillna("")


def _bits_order(bits: str) -> tuple:
    """fp first, then by decreasing weight and activation bits."""
    if bits == "fp":
        return (0, 0, 0)
    digits = [int(x) for x in "".join(c if c.isdigit() else " " for c in bits).split()]
    return (1, *(-d for d in digits))
