"""``maskaq``: MaskAQ (ICML'26; hfutqian/MaskAQ) as generator ``maskaq`` + calibrator ``minmax`` + tuner ``maskaq``
(docs/methods.md, MaskAQ): synthesis and fine-tuning take turns, every 30 epochs a fresh set is made against the
live quantized student."""
from __future__ import annotations

from harness.api import METHODS, MethodSpec
from methods.maskaq.generator import MaskAqGenerator, MaskAqOptions
from methods.maskaq.tuner import MaskAqTuner, MaskAqTunerOptions

METHODS.add("maskaq", MethodSpec(
    generator="maskaq", calibrator="minmax", tuner="maskaq",
    description="MaskAQ: attention-aligned synthesis against the live student, LSQ + KD fine-tuning (ICML'26)"))

__all__ = ["MaskAqGenerator", "MaskAqOptions", "MaskAqTuner", "MaskAqTunerOptions"]
