"""The public plugin API: everything a method or task plugin may import from the harness.

Plugins import from here only (``from harness.api import Generator, GENERATORS``), so the modules
behind it may move without breaking them; what is not listed in ``__all__`` is internal. The
source digest of a plugin (docs/results.md, Code versions and source digests) follows each name to
the module that defines it, so importing from here does not tie a plugin's digest to all of them.
docs/plugins.md, The plugin API, groups the names.
"""
from __future__ import annotations

from harness.arch import SUPPORTED, is_instrumented_attention, is_instrumented_block, is_window_attention
from harness.conformance import Hooks, cases, run_case
from harness.distillation import DISCREPANCIES, discrepancy, has_classifier, mean_discrepancy, resolve_discrepancy
from harness.errors import HarnessError
from harness.evaluation import tensor_batches, topk_accuracy
from harness.image_folder import ImageFolderOptions, ImageFolderTask
from harness.instrument import attach_point, get_point, remove_point
from harness.io import IMAGE_SUFFIXES, config_hash, current_umask, file_lock, file_sha256, write_json
from harness.mm.data import predictions as mm_predictions
from harness.mm.task import OpenMMLabModel, OpenMMLabTask
from harness.mm.tiny import save_random_init, write_images
from harness.method import (CalibrationContext, CalibrationSet, Calibrator, GenerationContext, Generator,
                            ImageCountOptions, MethodSpec, NoOptions)
from harness.options import Range, at_least, percent, positive, probability, ranged
from harness.paths import cache_dir
from harness.priors.attention_logits import attention_logit_probes
from harness.priors.attention_prior import (aligned_blocks, attention_alignment_loss, attention_probes,
                                            gaussian_mixture_priors, patch_attention)
from harness.priors.gallery import save_image_grid
from harness.priors.loop import Objective, PixelSynthesis, SynthesisOptions, field_order, gaussian_noise
from harness.priors.patch_similarity import PatchSimilarityOptions, Probe, attn_v_probes, patch_similarity_loss
from harness.priors.synthesis import (TV_SCALINGS, clamp_pixels, pixel_bounds, pixel_optimizer, random_roll_flip,
                                      synthesis_lr, total_variation, tv_loss, tv_target, warmup_cosine_lr)
from harness.progress import progress_bar, show_losses
from harness.quant.calibrate import mse_weight_scales, observe_and_freeze
from harness.quant.capture import LAYER_INPUT, LAYER_OUTPUT, Target, call_arguments, capture, floating_point
from harness.quant.fake_quant import (asymmetric_params, fake_quant_asymmetric, fake_quant_log2, fake_quant_symmetric,
                                      fake_quant_symmetric_signed, fake_quant_twin_signed, fake_quant_twin_uniform,
                                      symmetric_weight_scale)
from harness.quant.learnable import fix_scales, keep_scales_positive, learnable_scales
from harness.quant.learned_offset import (LearnedOffsetQuantizer, learned_offset_quantizers, minmax_weights_ste,
                                          restore_quantizers)
from harness.quant.lsq import lsq_gradient_scale
from harness.quant.modules import (ActQuantizer, QuantConv2d, QuantLinear, act_quantizers, unquantized_weights,
                                   weight_quantized_layers)
from harness.quant.observers import MinMaxObserver, MSEObserver, PercentileObserver
from harness.quant.reparam import fold_channel_params, norm_linear_pairs
from harness.quant.search import (best_candidate, fraction_candidates, output_similarity, percentile_mse_log_sqrt2_scale,
                                  percentile_mse_params)
from harness.records import read_calibration
from harness.registry import CALIBRATORS, GENERATORS, METHODS, MODELS, TASKS, TUNERS
from harness.support import ATTENTION, BLOCKS, CLASS_TOKEN, CLASSES, REAL_IMAGES
from harness.task import ImagePrior, SynthesisTarget, Task, TaskOptions, calibration_indices, register_models
from harness.task_setup import TaskSetup
from harness.timm_weights import hub_checkpoint, load_weights
from harness.tuner import NO_TUNING, Tuner, TuningContext, epoch_cosine
from harness.weights import read_state_dict, write_state_dict

__all__ = [
    # registries: plugins register on import
    "CALIBRATORS", "GENERATORS", "METHODS", "MODELS", "TASKS", "TUNERS", "register_models",
    # methods: the two halves, their contexts and the set passed between them; the optional fine-tuning stage
    "CalibrationContext", "CalibrationSet", "Calibrator", "GenerationContext", "Generator", "MethodSpec",
    "NO_TUNING", "Tuner", "TuningContext", "epoch_cosine",
    # teacher-student distances (PSAQ-ViT V2's student, the tuners)
    "DISCREPANCIES", "discrepancy", "has_classifier", "mean_discrepancy", "resolve_discrepancy",
    # tasks
    "ImageFolderOptions", "ImageFolderTask", "ImagePrior", "SynthesisTarget", "Task", "TaskOptions",
    "calibration_indices",
    # OpenMMLab detection / segmentation tasks (harness/mm; mmdet / mmseg load when a model is built) and
    # the pieces of their tiny offline instances
    "OpenMMLabModel", "OpenMMLabTask", "mm_predictions", "save_random_init", "write_images",
    # what plugins declare they need and offer (docs/plugins.md, Support)
    "ATTENTION", "BLOCKS", "CLASS_TOKEN", "CLASSES", "REAL_IMAGES",
    # options and errors
    "HarnessError", "ImageCountOptions", "NoOptions", "Range", "at_least", "percent", "positive", "probability",
    "ranged",
    # progress and evaluation
    "progress_bar", "show_losses", "tensor_batches", "topk_accuracy",
    # files, caches and weights
    "IMAGE_SUFFIXES", "cache_dir", "config_hash", "current_umask", "file_lock", "file_sha256", "hub_checkpoint",
    "load_weights", "read_calibration", "read_state_dict", "write_json", "write_state_dict",
    # model families the quantizer instruments (harness/arch)
    "SUPPORTED", "attach_point", "get_point", "remove_point", "is_instrumented_attention", "is_instrumented_block", "is_window_attention",
    # priors shared by generators (harness/priors)
    "Probe", "TV_SCALINGS", "aligned_blocks", "attention_alignment_loss", "attention_probes", "attn_v_probes",
    "clamp_pixels", "gaussian_mixture_priors", "patch_attention", "patch_similarity_loss", "pixel_bounds",
    "pixel_optimizer", "random_roll_flip", "save_image_grid", "synthesis_lr", "total_variation", "tv_target",
    "warmup_cosine_lr", "attention_logit_probes",
    # the one pixel-synthesis loop and its options (docs/methods.md, Pixel synthesis)
    "Objective", "PatchSimilarityOptions", "PixelSynthesis", "SynthesisOptions", "field_order", "gaussian_noise",
    "tv_loss",
    # the quantizer (harness/quant): modules, arithmetic, calibration passes, searches
    "ActQuantizer", "LAYER_INPUT", "LAYER_OUTPUT", "MSEObserver", "MinMaxObserver", "PercentileObserver",
    "QuantConv2d", "QuantLinear", "Target", "act_quantizers", "asymmetric_params", "best_candidate", "call_arguments",
    "capture", "fake_quant_asymmetric", "fake_quant_log2", "fake_quant_symmetric", "fake_quant_symmetric_signed",
    "fake_quant_twin_signed", "fake_quant_twin_uniform", "fix_scales", "floating_point", "fraction_candidates",
    "output_similarity",
    "fold_channel_params", "keep_scales_positive", "learnable_scales", "lsq_gradient_scale", "mse_weight_scales", "norm_linear_pairs",
    "observe_and_freeze", "percentile_mse_log_sqrt2_scale", "percentile_mse_params", "symmetric_weight_scale",
    "unquantized_weights", "weight_quantized_layers",
    "LearnedOffsetQuantizer", "learned_offset_quantizers", "minmax_weights_ste", "restore_quantizers",
    # tasks' small instances (harness.task_setup), and the conformance kit for plugins' tests
    "TaskSetup", "Hooks", "cases", "run_case",
]
