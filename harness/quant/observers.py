"""Activation-range observers used during calibration (docs/methods.md, Baselines).

Observers see unquantized activations (quantizers pass values through while observing), computed
with the weights the profile observes with: quantized in ``standard``, FP in ``psaq``
(:func:`harness.quant.calibrate.observe_and_freeze`, docs/quantizer.md, Calibration). The
calibrator then asks each observer for a range.
"""
from __future__ import annotations

import torch

from harness.quant.fake_quant import asymmetric_params, fake_quant_asymmetric


class MinMaxObserver:
    """Running min and max over every calibration batch."""

    def __init__(self) -> None:
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        low, high = x.detach().amin(), x.detach().amax()
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.low is None:
            raise RuntimeError("observer saw no data: the calibration pass did not reach this quantizer")
        return self.low, self.high


class PercentileObserver:
    """Lower/upper percentiles of each batch, averaged over batches weighted by element count."""

    def __init__(self, percentile: float) -> None:
        self.percentile = percentile
        self._weighted = torch.zeros(2, dtype=torch.float64)
        self._count = 0

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().flatten().float()
        n = flat.numel()
        k_high = max(1, min(n, round(n * self.percentile / 100.0)))
        k_low = max(1, n - k_high + 1)
        low = flat.kthvalue(k_low).values
        high = flat.kthvalue(k_high).values
        self._weighted += torch.stack([low, high]).double().cpu() * n
        self._count += n

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._count:
            raise RuntimeError("observer saw no data: the calibration pass did not reach this quantizer")
        low, high = (self._weighted / self._count).float()
        return low, high


class MSEObserver:
    """OMSE: the clipping range (alpha·min, alpha·max) minimizing the quantization MSE.

    The search runs on a bounded random subsample of the observed values, vectorized over
    ``num_candidates`` values of alpha in (0, 1].
    """

    def __init__(self, bits: int, num_candidates: int = 100, sample_limit: int = 1 << 18, seed: int = 0) -> None:
        self.bits = bits
        self.num_candidates = num_candidates
        self.sample_limit = sample_limit
        self._minmax = MinMaxObserver()
        self._samples: list[torch.Tensor] = []
        self._generator = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor) -> None:
        self._minmax.update(x)
        flat = x.detach().flatten().float().cpu()
        if flat.numel() > self.sample_limit:
            index = torch.randint(flat.numel(), (self.sample_limit,), generator=self._generator)
            flat = flat[index]
        self._samples.append(flat)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self._minmax.range()
        samples = torch.cat(self._samples)
        if samples.numel() > self.sample_limit:
            samples = samples[torch.randint(samples.numel(), (self.sample_limit,), generator=self._generator)]
        alphas = torch.linspace(1.0 / self.num_candidates, 1.0, self.num_candidates).view(-1, 1)
        lows, highs = alphas * low.cpu(), alphas * high.cpu()
        scale, zero_point = asymmetric_params(lows, highs, self.bits)
        errors = (fake_quant_asymmetric(samples.view(1, -1), scale, zero_point, self.bits) - samples).pow(2).mean(1)
        best = int(errors.argmin())
        return lows[best, 0].to(low.device), highs[best, 0].to(high.device)
