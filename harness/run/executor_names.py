"""The names of the places cells can run, without the backends: ``run --help`` lists them (``--executor``)
and must answer without loading torch, which :mod:`harness.run.executors` imports through the grid and the worker."""
from __future__ import annotations

EXECUTORS = ("local", "isolated", "ray", "slurm", "submitit-local")
