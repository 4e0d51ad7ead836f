"""Block-wise reconstruction (``block_recon``), SPDFQ's backend.

docs/methods.md, SPDFQ, Calibrator: block reconstruction.

A calibrator any generator can use (``--calib block_recon``); :mod:`methods.block_recon.calibrator`.
"""
from __future__ import annotations

from methods.block_recon.calibrator import BlockReconOptions, BlockReconstruction

__all__ = ["BlockReconOptions", "BlockReconstruction"]
