"""The public plugin API: everything a method or task plugin may import from the harness.

Plugins import from here only (``from harness.api import Generator, GENERATORS``), so the modules
behind it may move without breaking them; what is not listed in ``__all__`` is internal. The
source digest of a plugin (docs/results.md, Code versions and source digests) follows each name to
the module that defines it, so importing from here does not tie a plugin's digest to all of them.
docs/plugins.md, The plugin API, groups the names.
"""
from __future__ import annotations

from harness.data.image_folder import ImageFolderOptions, ImageFolderTask
from harness.data.mm.task import OpenMMLabModel, OpenMMLabTask
from harness.errors import HarnessError
from harness.plugin.capabilities import ATTENTION, BLOCKS, CLASS_TOKEN, CLASSES, LOGITS, OBJECTIVE, REAL_IMAGES
from harness.plugin.method import (CalibrationContext, CalibrationSet, Calibrator, GenerationContext, Generator,
                                   ImageCountOptions, MethodSpec, NoOptions)
from harness.plugin.options import Range, at_least, percent, positive, probability, ranged
from harness.plugin.registry import CALIBRATORS, GENERATORS, METHODS, MODELS, TASKS, TUNERS, register_models
from harness.plugin.task import ImagePrior, SynthesisTarget, Task, TaskOptions, calibration_indices
from harness.plugin.task_setup import TaskSetup
from harness.plugin.tuner import NO_TUNING, Tuner, TuningContext
from harness.progress import progress_bar, show_losses
from harness.quant.bits import BitSpec

__all__ = [
    "ATTENTION", "BLOCKS", "CALIBRATORS", "CLASS_TOKEN", "CLASSES", "GENERATORS", "LOGITS", "METHODS", "MODELS", "NO_TUNING",
    "OBJECTIVE", "REAL_IMAGES", "TASKS", "TUNERS", "BitSpec", "CalibrationContext", "CalibrationSet", "Calibrator", "GenerationContext",
    "Generator", "HarnessError", "ImageCountOptions", "ImageFolderOptions", "ImageFolderTask", "ImagePrior",
    "MethodSpec", "NoOptions", "OpenMMLabModel", "OpenMMLabTask", "Range", "SynthesisTarget", "Task", "TaskOptions",
    "TaskSetup", "Tuner", "TuningContext", "at_least", "calibration_indices", "percent", "positive", "probability",
    "progress_bar", "ranged", "register_models", "show_losses",
]
