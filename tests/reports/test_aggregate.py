"""reports.aggregate: statistics over seeds and cost, as the report and the run summary use them."""
from __future__ import annotations

import math

import pytest

from reports.aggregate import cost_table, leaderboard, records_frame, seed_stats


def test_seed_stats(grid_records):
    stats = seed_stats(records_frame(grid_records), "metric.top1").set_index(["subset", "label", "bits"])
    psaq = stats.loc[("all images", "psaq", "w8a8")]
    assert (psaq["mean"], psaq["std"], psaq["seeds"]) == (72.0, 1.0, 3)
    assert psaq["fp"] == pytest.approx(72.30) and psaq["drop"] == pytest.approx(0.30)
    assert math.isnan(stats.loc[("all images", "noise", "w8a8"), "std"])  # one seed: no spread
    assert stats.loc[("first 100 images", "psaq", "w8a8"), "mean"] == 50.0  # never averaged with the full set
    assert ("all images", "noise", "w4a3") not in stats.index  # the failed cell


def test_terminal_leaderboard(grid_records):
    table = leaderboard(records_frame(grid_records), "metric.top1")
    assert list(table.columns) == ["w8a8", "w4a8", "w4a4"]
    assert list(table.loc[("imagenet", "deit_tiny_patch16_224", "all images", "noise")]) == [
        "70.25 (1)", "", "17.50 ± 0.71 (2)"]
    assert list(table.loc[("imagenet", "deit_tiny_patch16_224", "first 100 images", "psaq")]) == ["50.00 (1)", "", ""]


def test_cost_table(grid_records):
    costs = cost_table(records_frame(grid_records)).set_index(["subset", "label"])
    noise = costs.loc[("all images", "noise")]
    assert noise["time.generate"] == pytest.approx((10 + 10 + 11) / 3)
    assert (noise["cells"], noise["cache_hits"], noise["memory.peak_rss_mb"]) == (3, 1, 1001.0)


def _kernels(torch_cpu: str, fused: str = "compiled") -> dict:
    return {"device": "cpu", "torch": "2.14.1", "torch_cpu": torch_cpu, "fused": fused,
            "cpu": {"model": "AMD EPYC", "arch": "x86_64", "extensions": ["avx2"]}}


def test_seeds_on_other_kernels_are_rows_of_their_own_never_averaged(make_record):
    records = [make_record(seed=0, top1=70.0), make_record(seed=1, top1=71.0), make_record(seed=2, top1=60.0)]
    for record, kernels in zip(records, (_kernels("AVX2"), _kernels("AVX2"), _kernels("DEFAULT", "eager"))):
        record["kernels"] = kernels
    stats = seed_stats(records_frame(records), "metric.top1").set_index("label")
    assert stats.loc["psaq ‹cpu AVX2, fused compiled, torch 2.14.1›", ["mean", "seeds"]].tolist() == [70.5, 2]
    assert stats.loc["psaq ‹cpu DEFAULT, fused eager, torch 2.14.1›", ["mean", "seeds"]].tolist() == [60.0, 1]
    # one kernel class: the plain label; records from before kernels were recorded are a class of their own
    same = seed_stats(records_frame(records[:2]), "metric.top1")
    assert same["label"].tolist() == ["psaq"] and same["seeds"].tolist() == [2]
    del records[1]["kernels"]
    assert sorted(records_frame(records[:2])["label"]) == ["psaq ‹cpu AVX2, fused compiled, torch 2.14.1›",
                                                           "psaq ‹not recorded›"]


def test_deployments_measured_on_other_cpus_are_separate_rows(make_record):
    from reports.content import _deployment_rows

    def deployed(seed: int, extensions: list[str], speedup: float) -> dict:
        record = make_record(seed=seed)
        record["deployment"] = {
            "runtime": "onnxruntime", "version": "1.32.0", "execution_provider": "CPUExecutionProvider",
            "cpu": {"model": "AMD EPYC", "arch": "x86_64", "extensions": extensions}, "deployable": True,
            "threads": 2, "weight_types": ["u8"], "metrics": {"top1": 70.0}, "difference": {"top1": 0.0},
            "speedup": {"batch1": speedup, "batch32": speedup}, "size_ratio": 0.27}
        return record

    frame = records_frame([deployed(0, ["avx2"], 1.6), deployed(1, ["avx2"], 1.8),
                           deployed(2, ["avx2", "avx512f", "avx512_vnni"], 2.6)])
    rows = _deployment_rows(frame, "deit_tiny_patch16_224", "all images", "metric.top1")
    assert [(row.setup, row.cells, round(row.speedup32, 9)) for row in rows] == [
        ("x86_64 AVX-512 VNNI (AMD EPYC), onnxruntime 1.32.0 CPUExecutionProvider, 2 threads, weights u8", 1, 2.6),
        ("x86_64 AVX2 (AMD EPYC), onnxruntime 1.32.0 CPUExecutionProvider, 2 threads, weights u8", 2, 1.7)]
