"""Records -> pandas: one row per finished cell, statistics over seeds, and cost per method."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import pandas as pd

from harness.errors import HarnessError
from harness.run.grid import Cell, cell_from_record, code_differences
from harness.run.labels import row_label
from harness.store.io import config_hash
from harness.store.keys import record_configuration
from harness.store.machine import cpu_class, kernel_class

STALE_MARK = "†"
IDENTITY = ("cell_id", "label", "method", "generator", "calibrator", "task", "model", "bits", "seed")
# A leaderboard entry: one method (label) at one bit width on one model and evaluation subset; every
# record of an entry is one configuration, so they share ``published_as``
ENTRY = ["task", "model", "subset", "label", "method", "published_as", "bits"]


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Flatten ``ok`` records: identity columns plus ``metric.*``, ``fp.*``, ``time.*`` and ``memory.*``.

    ``stale`` says how the code that made a record differs from the checkout's (empty when it does not).
    """
    rows = []
    for record in records:
        if record.get("status") != "ok":
            continue
        row = {key: record.get(key) for key in IDENTITY}
        # a result made by other code than the checkout's is its own row, marked with a code fingerprint
        row["stale"] = "; ".join(code_differences(record))
        if row["stale"]:
            row["label"] = f"{row['label']} {STALE_MARK} code {config_hash(record.get('code') or {}, 6)}"
        options = record.get("options", {})
        row["profile"] = options.get("quant", {}).get("profile")
        # Cells evaluated on different subsets (--limit) have different FP values: never average them.
        row["subset"] = "all images" if options.get("limit") is None else f"first {options['limit']} images"
        row["cache_hit"] = bool(record.get("generator_cache_hit", False))
        # what calibrated it: real images or data-free (an FP cell needs none; older records did not say)
        row["data"] = "" if record.get("bits") == "fp" else record.get("calibration_data", "not recorded")
        row["protocol"] = protocol(record)
        cell = recorded_cell(record)
        row["untuned_label"] = untuned_label(cell)
        row.update({f"metric.{k}": v for k, v in record.get("metrics", {}).items()})
        row.update({f"fp.{k}": v for k, v in record.get("fp_metrics", {}).items()})
        row.update({f"time.{k}": v for k, v in record.get("timing_s", {}).items()})
        row.update({f"memory.{k}": v for k, v in record.get("memory", {}).items()})
        row.update(_deployment_columns(record.get("deployment")))
        row["weights_id"] = record.get("weights_id")
        row["configuration"] = record_configuration(record)
        row["kernels"] = kernel_class(record.get("kernels"))
        row["published_as"] = published_method(cell)
        rows.append(row)
    return _one_kernel_class_per_label(_one_configuration_per_label(pd.DataFrame(rows)))


def recorded_cell(record: dict[str, Any]) -> Cell | None:
    """The cell a record was made for, rebuilt from its fields: what its row label and the published figures
    that apply to it are read from (harness.run.labels); None where a plugin is gone or an option no longer fits."""
    try:
        return cell_from_record(record)
    except (HarnessError, KeyError, TypeError, ValueError):
        return None


def protocol(record: dict[str, Any]) -> str:
    """Calibration only, or fine-tuned and by which tuner (docs/results.md, Protocols); empty for FP."""
    if record.get("bits") == "fp":
        return ""
    return f"fine-tuned: {record['tuner']}" if record.get("tuner") else "calibration only"


def published_as(record: dict[str, Any]) -> str:
    """The method whose published figures apply to the record's configuration (its own pair, tuner and options),
    read from the record's fields (harness.run.labels); empty when none does or a plugin is gone."""
    return published_method(recorded_cell(record))


def published_method(cell: Cell | None) -> str:
    return (row_label(cell).published_method or "") if cell is not None else ""


def untuned_label(cell: Cell | None) -> str:
    """For a fine-tuned cell, the label the same configuration has without its tuner: the row its
    tuning gain is measured against (empty for calibration-only cells, or where a plugin is gone)."""
    if cell is None or cell.tuner is None:
        return ""
    return str(row_label(dataclasses.replace(cell, tuner=None, tuner_options=None)))


def _one_configuration_per_label(frame: pd.DataFrame) -> pd.DataFrame:
    """Give records of different configurations sharing a label (other weights, another version of the
    same options) labels of their own, so seeds are the only thing a leaderboard entry averages over."""
    if frame.empty:
        return frame
    for _, group in frame.groupby(["task", "model", "subset", "label", "bits"], sort=False):
        if group["configuration"].nunique() < 2:
            continue
        several_weights = group["weights_id"].nunique() > 1
        for index, row in group.iterrows():
            weights = f"weights {str(row['weights_id'])[:8]}, " if several_weights else ""
            frame.loc[index, "label"] = f"{row['label']} ‹{weights}config {row['configuration'][:6]}›"
    return frame


def _one_kernel_class_per_label(frame: pd.DataFrame) -> pd.DataFrame:
    """Give seeds of one entry computed on different kernels (another CPU class, eager instead of fused
    kernels, another torch or device) labels of their own: their values may differ by more than rounding,
    so the report never averages them as seeds (docs/results.md, Kernels)."""
    if frame.empty:
        return frame
    for _, group in frame.groupby(["task", "model", "subset", "label", "bits"], sort=False):
        if group["kernels"].nunique() > 1:
            frame.loc[group.index, "label"] = [f"{label} ‹{kernels}›" for label, kernels in zip(group["label"], group["kernels"])]
    return frame


def calibration_data(values: Iterable[str]) -> str:
    """What a leaderboard row's records were calibrated with: ``data-free`` only if every one says so."""
    values = {value for value in values if value}
    for answer in ("real", "not recorded"):
        if answer in values:
            return answer
    return "data-free" if values else ""


def primary_metric(frame: pd.DataFrame) -> str:
    """``metric.top1`` when present, else the first metric column (box AP, mIoU, ...)."""
    columns = [c for c in frame.columns if c.startswith("metric.")]
    return "metric.top1" if "metric.top1" in columns else columns[0]


def seed_stats(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per leaderboard entry: mean, sample std and number of seeds, the FP value and the drop from it.

    ``std`` is NaN for a single seed (no spread to report); ``drop`` is FP minus the mean, so a
    positive drop is accuracy lost to quantization.
    """
    fp = "fp." + metric.removeprefix("metric.")
    measured = frame.dropna(subset=[metric])
    grouped = measured.groupby(ENTRY, sort=True)
    stats = grouped[metric].agg(mean="mean", std="std", seeds="count")
    stats["fp"] = grouped[fp].mean() if fp in measured.columns else math.nan
    stats["drop"] = stats["fp"] - stats["mean"]
    return stats.reset_index()


def format_estimate(mean: float, std: float, seeds: int) -> str:
    """``mean ± std (seeds)``; a single seed has no std, so it shows ``mean (1)``."""
    spread = "" if pd.isna(std) else f" ± {std:.2f}"
    return f"{mean:.2f}{spread} ({int(seeds)})"


def leaderboard(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Text pivot for the terminal: rows (task, model, subset, label), columns bits, cells ``mean ± std (n)``."""
    stats = seed_stats(frame, metric)
    stats["text"] = [format_estimate(m, s, n) for m, s, n in zip(stats["mean"], stats["std"], stats["seeds"])]
    table = stats.pivot(index=["task", "model", "subset", "label"], columns="bits", values="text")
    return table[sorted(table.columns, key=bits_order)].fillna("")


def seed_values(frame: pd.DataFrame, metric: str) -> dict[tuple, dict[int, float]]:
    """(model, subset, label, bits) -> {seed: value}: what the significance tests compare."""
    values: dict[tuple, dict[int, float]] = {}
    for row in frame.dropna(subset=[metric]).to_dict("records"):
        values.setdefault((row["model"], row["subset"], row["label"], row["bits"]), {})[int(row["seed"])] = row[metric]
    return values


def cost_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, model, subset, label): mean seconds per stage over cells, peak memory, cells, cache hits.

    A cache hit reports the generation time of the run that filled the cache, so the synthesis
    column is the cost of one generator run either way.
    """
    columns = {f"time.{stage}": "mean" for stage in ("generate", "calibrate", "tune", "evaluate")}
    columns.update({c: "max" for c in frame.columns if c.startswith("memory.")})
    for column in columns:
        if column not in frame.columns:
            frame = frame.assign(**{column: math.nan})
    grouped = frame.groupby(["task", "model", "subset", "label"], sort=True)
    costs = grouped.agg(columns)
    costs["cells"] = grouped.size()
    costs["cache_hits"] = grouped["cache_hit"].sum()
    return costs.reset_index()


def _deployment_columns(deployment: dict[str, Any] | None) -> dict[str, Any]:
    """``deploy.*`` columns of a record measured with ``--deploy`` (docs/deploy.md, The grid option)."""
    if not deployment:
        return {}
    if not deployment.get("deployable"):
        return {"deploy.status": deployment.get("reason", "simulated only"), "deploy.setup": deployment_setup(deployment)}
    columns = {"deploy.status": "deployable", "deploy.setup": deployment_setup(deployment),
               "deploy.speedup1": deployment["speedup"]["batch1"],
               "deploy.speedup32": deployment["speedup"]["batch32"], "deploy.size_ratio": deployment["size_ratio"]}
    columns.update({f"deploy.metric.{k}": v for k, v in deployment["metrics"].items()})
    columns.update({f"deploy.difference.{k}": v for k, v in deployment["difference"].items()})
    return columns


def deployment_setup(deployment: dict[str, Any]) -> str:
    """What decides a deployment's figures, as one text (docs/deploy.md, What decides a deployment figure):
    CPU class and model, runtime, version and execution provider, threads, the weights' integer types.
    Records measured in different setups are never averaged."""
    cpu = deployment.get("cpu")
    parts = [f"{cpu_class(cpu)} ({cpu.get('model', 'unknown')})" if isinstance(cpu, dict) else "CPU not recorded",
             f"{deployment.get('runtime', '?')} {deployment.get('version', '?')} "
             f"{deployment.get('execution_provider', 'CPUExecutionProvider')}"]
    if deployment.get("threads"):
        parts.append(f"{deployment['threads']} threads")
    if deployment.get("weight_types"):
        parts.append("weights " + "+".join(map(str, deployment["weight_types"])))
    return ", ".join(parts)


def bits_order(bits: str) -> tuple:
    """fp first, then by decreasing weight and activation bits."""
    if bits == "fp":
        return (0, 0, 0)
    digits = [int(x) for x in "".join(c if c.isdigit() else " " for c in bits).split()]
    return (1, *(-d for d in digits))
