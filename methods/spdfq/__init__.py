"""SPDFQ (``spdfq``; Zhong et al., 2024, later SARDFQ; docs/methods.md, SPDFQ).

Generator ``spdfq`` (:mod:`methods.spdfq.generator`): noise optimized with attention priors (APA),
multi-semantic crops (MSR) and soft labels (SL), each switchable for the paper's ablation. Methods:
``spdfq`` pairs it with the paper's backend, block-wise reconstruction (calibrator ``block_recon``,
its own plugin so any generator can use it); ``spdfq_minmax`` with min-max ranges, the fair
shared-backend comparison with PSAQ-ViT (docs/methods.md, SPDFQ).
"""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.spdfq.generator import SPDFQGenerator, SPDFQOptions

METHODS.add("spdfq", MethodSpec(generator="spdfq", calibrator="block_recon",
                                description="SPDFQ synthesis (APA+MSR+SL), block-wise reconstruction"))
METHODS.add("spdfq_minmax", MethodSpec(generator="spdfq", calibrator="minmax",
                                       description="SPDFQ synthesis (APA+MSR+SL), min-max ranges"))

__all__ = ["SPDFQGenerator", "SPDFQOptions"]
