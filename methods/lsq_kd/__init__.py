"""``lsq_kd``: a tuner, not a method (docs/methods.md, Fine-tuning): ``--tune lsq_kd`` fine-tunes any
generator x calibrator pair's calibrated model on its calibration images, distilling from the FP model."""
from __future__ import annotations

from methods.lsq_kd.tuner import LsqKdOptions, LsqKdTuner

__all__ = ["LsqKdOptions", "LsqKdTuner"]
