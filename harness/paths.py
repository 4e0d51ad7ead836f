"""Where the harness keeps things that outlive a run: the user cache (trained miniatures)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$DFQ_HARNESS_CACHE``, else ``~/.cache/dfq_harness`` (never inside the repository)."""
    root = os.environ.get("DFQ_HARNESS_CACHE") or Path.home() / ".cache" / "dfq_harness"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
