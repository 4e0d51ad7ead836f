"""Ranking-loss PTQ (``ranking``; Liu et al., NeurIPS 2021; docs/methods.md, Ranking-loss PTQ).

Calibrator ``ranking`` (:mod:`methods.ranking.calibrator`): per-layer scale search with Pearson
correlation and the attention ranking loss, bias correction, and nuclear-norm mixed precision
(``mp6``, ``mp8``). Methods: ``ranking`` pairs it with real images (the paper's setting),
``ranking_dfq`` with PSAQ-ViT's synthetic images; any generator crosses with it through
``--data X --calib ranking``.
"""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.ranking.calibrator import RankingCalibrator, RankingOptions

METHODS.add("ranking", MethodSpec(generator="real", calibrator="ranking",
                                  description="real training images, ranking-loss scale search (Liu et al. 2021)"))
METHODS.add("ranking_dfq", MethodSpec(generator="psaq", calibrator="ranking",
                                      description="PSAQ-ViT synthetic images, ranking-loss scale search"))

__all__ = ["RankingCalibrator", "RankingOptions"]
