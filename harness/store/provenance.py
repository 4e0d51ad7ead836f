"""Where and with what a record was made: library versions, the harness's git commit, host and date."""
from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from harness.store.paths import PROJECT_ROOT

TRACKED_PACKAGES = ("torch", "torchvision", "timm", "numpy", "scikit-learn", "pandas", "mmdet", "mmsegmentation", "mmengine")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def harness_commit() -> str:
    """The harness's git commit, with ``+dirty`` when the work tree has changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def provenance() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}",
    }
