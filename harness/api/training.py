"""Teacher-student distances and the schedule the fine-tuning stage shares (docs/methods.md, Fine-tuning).
For tuners and generators that distil.
"""
from __future__ import annotations

from harness.plugin.tuner import epoch_cosine
from harness.quant.distillation import DISCREPANCIES, discrepancy, has_classifier, mean_discrepancy, resolve_discrepancy

__all__ = [
    "DISCREPANCIES", "discrepancy", "epoch_cosine", "has_classifier", "mean_discrepancy", "resolve_discrepancy",
]
