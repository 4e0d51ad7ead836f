"""Build mmdet/mmseg objects (models, datasets, metrics) from config dicts inside the library's scope."""
from __future__ import annotations

from typing import Any, Literal

from torch import nn

from harness.data.mm.stack import quiet, require

_registered: set[str] = set()


def build(scope: str, kind: Literal["MODELS", "DATASETS", "METRICS"], config: Any) -> Any:
    """``config`` built by the ``kind`` registry of ``scope`` (``mmdet`` or ``mmseg``)."""
    registries = require(f"{scope}.registry")
    if scope not in _registered:
        require(f"{scope}.utils").register_all_modules(init_default_scope=False)
        _registered.add(scope)
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope(scope), quiet():
        return getattr(registries, kind).build(config)


def build_model(scope: str, config: Any) -> nn.Module:
    """An FP model from its config, in eval mode; SyncBN becomes BN (equal in eval, and it runs on CPU)."""
    from mmengine.model import revert_sync_batchnorm

    return revert_sync_batchnorm(build(scope, "MODELS", config)).eval()
