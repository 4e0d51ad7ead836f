"""Every key the result store files a cell's artefacts under, in one place (docs/results.md, Cell identity).

A cell is resolved once (:class:`CellKeys`: the config its record stores, the code behind it, its task's
weights) and every key comes from that resolution: the record's cell id, the cache key of its calibration
set, the name of its FP metric, and the configuration that groups a record's seeds. The paths those keys
name are the store's (:class:`harness.store.records.ResultStore`).
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from harness.store.io import config_hash

RECORD_SCHEMA = 2  # 2: records carry the code versions and source digests that made them
# task options that change where or how fast a result is computed, never the result: out of every key
EXECUTION_ONLY_TASK_OPTIONS = ("data_root", "batch_size", "num_workers", "checkpoint", "eval_cache")


@dataclass(frozen=True)
class CellKeys:
    """A cell resolved against the checkout and its task's weights, and the keys derived from it.

    ``config`` is what the record stores (:meth:`harness.run.grid.Cell.config`), ``code`` the version and
    source digest of each component (:meth:`harness.run.grid.Cell.code`).
    """

    config: dict[str, Any]
    code: dict[str, dict[str, str]]
    weights_id: str

    @property
    def is_fp(self) -> bool:
        return self.config["bits"] == "fp"

    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """What makes two cells the same computation: the config, the weights and the code versions.

        Source digests stay out: an edit without a version bump keeps the cell's id, and the runner
        names the records such code made instead of silently recomputing or reusing them.
        """
        config = copy.deepcopy(self.config)
        for key in EXECUTION_ONLY_TASK_OPTIONS:
            config["options"]["task"].pop(key, None)
        if self.is_fp:  # an FP cell does not depend on how a quantizer would be set up
            config["generator"] = config["calibrator"] = None
            config["options"] = {"task": config["options"]["task"], "limit": config["options"]["limit"]}
        versions = {component: code["version"] for component, code in self.code.items()}
        return {"schema": RECORD_SCHEMA, "weights_id": self.weights_id, "versions": versions, **config}

    @functools.cached_property
    def cell_id(self) -> str:
        """The name of the cell's record."""
        return config_hash(self.identity)

    def calibration_key(self, prior: object, class_source: str | None = None) -> str:
        """The cache key of the cell's calibration set: (generator, options, model, weights, seed, prior, versions,
        and the class source where a task's backbone borrows classes: docs/methods.md, Class sources)."""
        config = self.config
        versions = {name: self.code[name]["version"] for name in ("generator", "task")}
        return config_hash({"generator": config["generator"], "options": config["options"]["generator"],
                            "task": config["task"], "model": config["model"], "weights_id": self.weights_id,
                            "seed": config["seed"], "prior": str(prior), "versions": versions,
                            **({"class_source": class_source} if class_source else {})})

    @property
    def fp_metric_name(self) -> str:
        """The cached FP metric's name: one per (task, model, weights, task options, limit, task version)."""
        config = self.config
        task_options = config_hash(config["options"]["task"])[:8]  # data root, config, ...
        return (f"{config['task']}-{config['model']}-{self.weights_id}-{task_options}-{config['options']['limit']}"
                f"-v{self.code['task']['version']}")


def record_configuration(record: dict[str, Any]) -> str:
    """A hash of what a record's result depends on except its seed: records sharing it are seeds of one
    configuration, the only records a leaderboard may average (docs/results.md, Leaderboard rows)."""
    options = dict(record.get("options") or {})
    options["task"] = {key: value for key, value in (options.get("task") or {}).items()
                       if key not in EXECUTION_ONLY_TASK_OPTIONS}
    if record.get("bits") == "fp":
        options = {"task": options["task"], "limit": options.get("limit")}
    versions = {name: (code or {}).get("version") for name, code in (record.get("code") or {}).items()}
    tuned = {"tuner": record["tuner"]} if record.get("tuner") else {}  # calibration-only hashes as before tuners
    return config_hash({**{key: record.get(key) for key in ("method", "task", "model", "bits", "weights_id")},
                        "pair": None if record.get("bits") == "fp" else [record.get("generator"), record.get("calibrator")],
                        "options": options, "versions": versions, **tuned})
