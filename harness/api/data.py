"""Files, caches, weights and evaluation helpers for tasks (docs/plugins.md, Tasks): safe writes and
locks, checkpoint readers, metrics, the tiny offline instances of the OpenMMLab tasks.
"""
from __future__ import annotations

from harness.data.evaluation import tensor_batches, topk_accuracy
from harness.data.mm.data import predictions as mm_predictions
from harness.data.mm.tiny import save_random_init, write_images
from harness.data.timm_weights import hub_checkpoint, load_weights
from harness.data.weights import read_state_dict, write_state_dict
from harness.store.calibration_cache import read_calibration
from harness.store.io import IMAGE_SUFFIXES, config_hash, current_umask, file_lock, file_sha256, write_json
from harness.store.paths import cache_dir

__all__ = [
    "IMAGE_SUFFIXES", "cache_dir", "config_hash", "current_umask", "file_lock", "file_sha256", "hub_checkpoint",
    "load_weights", "mm_predictions", "read_calibration", "read_state_dict", "save_random_init", "tensor_batches",
    "topk_accuracy", "write_images", "write_json", "write_state_dict",
]
