"""A cell's peak memory, recorded with its result (docs/results.md, Records)."""
from __future__ import annotations

import os
import threading

import torch

class PeakMemory:
    """Peak resident memory (MiB) while the block runs, sampled from /proc; plus CUDA peak if used."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss_mb(self) -> float:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_mb = max(self.peak_rss_mb, self._rss_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss_mb = max(self.peak_rss_mb, self._rss_mb())

    def summary(self) -> dict[str, float]:
        result = {"peak_rss_mb": round(self.peak_rss_mb, 1)}
        if torch.cuda.is_available():
            result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return result
