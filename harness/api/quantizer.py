"""The quantizer's building blocks (docs/quantizer.md): quantized modules and their points, observers,
fake-quantization arithmetic, calibration passes and searches, learned scales and rounding, block
reconstruction, the model families the quantizer instruments. For calibrators and tuners.
"""
from __future__ import annotations

from harness.model.arch import SUPPORTED, is_instrumented_attention, is_instrumented_block, is_window_attention
from harness.model.instrument import attach_point, get_point, remove_point
from harness.quant.adalog import (GELU_SHIFT, adalog_search_values, candidate_batch, dequantization_tables,
                                  fake_quant_adalog, positive_percentiles, progressive_search, search_table,
                                  set_adalog_params, tensor_percentiles, uniform_candidates, weight_candidates)
from harness.quant.calibrate import mse_weight_scales, observe_and_freeze
from harness.quant.capture import LAYER_INPUT, LAYER_OUTPUT, Target, call_arguments, capture, floating_point
from harness.quant.convert import PROFILES, QuantProfile
from harness.quant.fake_quant import (asymmetric_params, fake_quant_asymmetric, fake_quant_log2,
                                      fake_quant_offset_after_round, fake_quant_symmetric, fake_quant_symmetric_signed,
                                      fake_quant_twin_signed, fake_quant_twin_uniform, symmetric_weight_scale)
from harness.quant.grid_search import calibrate_by_grid_search
from harness.quant.learnable import fix_scales, keep_scales_positive, learnable_scales
from harness.quant.learned_offset import (LearnedOffsetQuantizer, learned_offset_quantizers, minmax_weights_ste,
                                          restore_quantizers)
from harness.quant.lsq import lsq_gradient_scale
from harness.quant.modules import (ActQuantizer, QuantConv2d, QuantLinear, act_quantizers, unquantized_weights,
                                   weight_quantized_layers)
from harness.quant.objectives import LogitDivergence, OutputObjective, binary_kl
from harness.quant.observers import MinMaxObserver, MSEObserver, PercentileObserver
from harness.quant.reconstruction import (FisherDPLR, LogitKL, OutputMSE, PerturbationHessian, ReconstructionSettings,
                                          reconstruct, reconstruct_mlps, relu_mlps)
from harness.quant.reparam import fold_channel_params, norm_linear_pairs
from harness.quant.search import (best_candidate, fraction_candidates, output_similarity,
                                  percentile_mse_log_sqrt2_scale, percentile_mse_params)
from harness.quant.search_reconstruct import SearchReconstructOptions

__all__ = [
    "GELU_SHIFT", "LAYER_INPUT", "LAYER_OUTPUT", "SUPPORTED", "ActQuantizer", "FisherDPLR", "LearnedOffsetQuantizer",
    "LogitDivergence", "LogitKL", "MinMaxObserver", "MSEObserver", "OutputMSE", "OutputObjective", "PROFILES", "PercentileObserver", "PerturbationHessian",
    "QuantConv2d", "QuantLinear", "QuantProfile", "ReconstructionSettings", "SearchReconstructOptions", "Target",
    "act_quantizers", "adalog_search_values", "asymmetric_params", "attach_point", "best_candidate", "binary_kl",
    "calibrate_by_grid_search", "call_arguments", "candidate_batch", "capture", "dequantization_tables",
    "fake_quant_adalog", "fake_quant_asymmetric", "fake_quant_log2", "fake_quant_offset_after_round",
    "fake_quant_symmetric", "fake_quant_symmetric_signed", "fake_quant_twin_signed", "fake_quant_twin_uniform",
    "fix_scales", "floating_point", "fold_channel_params", "fraction_candidates", "get_point",
    "is_instrumented_attention", "is_instrumented_block", "is_window_attention", "keep_scales_positive",
    "learnable_scales", "learned_offset_quantizers", "lsq_gradient_scale", "minmax_weights_ste", "mse_weight_scales",
    "norm_linear_pairs", "observe_and_freeze", "output_similarity", "percentile_mse_log_sqrt2_scale",
    "percentile_mse_params", "positive_percentiles", "progressive_search", "reconstruct", "reconstruct_mlps",
    "relu_mlps", "remove_point", "restore_quantizers", "search_table", "set_adalog_params", "symmetric_weight_scale",
    "tensor_percentiles", "uniform_candidates", "unquantized_weights", "weight_candidates", "weight_quantized_layers",
]
