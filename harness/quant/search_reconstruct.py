"""Options shared by the calibrators that grid-search every quantizer and then reconstruct blocks with AdaRound
and QDrop: APHQ-ViT and FIMA-Q, whose code keeps AdaLog's configuration names and defaults (docs/methods.md,
APHQ-ViT and FIMA-Q). Each method adds its own objective and options on top.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.plugin.options import at_least, positive, probability
from harness.quant.grid_search import calibrate_by_grid_search
from harness.quant.reconstruction import ReconstructionSettings


@dataclass
class SearchReconstructOptions:
    """The authors' defaults, their configs/4bit/best.py (docs/methods.md, APHQ-ViT)."""

    calib_size: int = at_least(1, 128)  # images the quantizer search sees (the first of the set)
    optim_size: int = at_least(1, 1024)  # images reconstruction sees
    search_candidates: int = at_least(2, 128)  # eq_n
    search_rounds: int = at_least(0, 3)  # search_round
    search_batch: int = at_least(1, 32)  # calib_batch_size: images per summed score
    input_bits: int = at_least(8, 8)  # qconv_a_bit: >= 8, the patch embedding's input stays unquantized
    per_head: bool = True  # matmul_head_channel_wise
    reparameterize: bool = True  # LayerNorm-fed Linears: per-channel, folded into the norm (equal W/A bits)
    iterations: int = at_least(0, 20000)  # per unit (their reconstruct_single_block default)
    batch_size: int = at_least(1, 32)  # optim_batch_size
    drop_prob: float = probability(0.5)  # QDrop
    temperature: float = positive(20.0)  # temp: logits / T in the objectives' KL divergence

    def __post_init__(self) -> None:
        if min(self.calib_size, self.optim_size, self.batch_size, self.search_batch) < 1 or self.input_bits < 8:
            raise ValueError("sizes must be >= 1 and input_bits >= 8")

    def search(self, qmodel: torch.nn.Module, images: torch.Tensor, device: torch.device, capture_batch: int,
               token_wise: bool) -> dict[str, int]:
        """Every quantizer searched on the first ``calib_size`` images (harness.quant.grid_search)."""
        return calibrate_by_grid_search(
            qmodel, images[:self.calib_size], device, capture_batch, count=self.search_candidates,
            rounds=self.search_rounds, batch_size=self.search_batch, per_head=self.per_head, token_wise=token_wise,
            input_bits=self.input_bits, reparameterize=self.reparameterize)

    def reconstruction(self) -> ReconstructionSettings:
        return ReconstructionSettings(iterations=self.iterations, batch_size=self.batch_size,
                                      drop_prob=self.drop_prob, temperature=self.temperature)
