"""Elementwise-then-reduce kernels fused by ``torch.compile``, with the eager function as fallback.

Eager torch makes one memory pass per operation; a kernel such as the patch-similarity KDE
(subtract, square, scale, clamp, exp, sum, for each of 10 points) spends its time there. Inductor
fuses the chain into one loop over the samples; no formula changes, since the functions compiled
are the eager ones (differentiable ones get a fused backward too). Compiling needs a C++ compiler
on CPU (Triton on GPU); where it fails, the eager function runs and one warning says why. The
first call of every compiled kernel is checked against the eager function on the same inputs: a
compiler that builds but computes wrong values (measured: inductor's AVX2 code when torch's kernels
are forced to AVX2 on an AVX-512 machine gave NaN) also falls back, with the discrepancy named.
``DFQ_HARNESS_FUSED=0`` turns fusion off. :func:`fused_kernel_states` says, for every set of kernels,
on which devices compiled kernels ran or why they fell back (``benchmarks/gpu_check.py``).
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
import weakref
from typing import Any, Callable

import torch

ENVIRONMENT_SWITCH = "DFQ_HARNESS_FUSED"


class FusedKernels:
    """The compiled versions of a plugin's kernels, made on first use and shared by every call.

    A compilation failure (or a compiled kernel that disagrees with its eager function) anywhere
    turns every ``FusedKernels`` to eager torch for the rest of the process, with one warning.
    """

    def __init__(self, purpose: str, probe: Callable[[], None] | None = None, tolerance: float = 1e-3) -> None:
        self.purpose = purpose
        # how far a compiled kernel's first result may be from eager torch's, relative to its largest
        # value (see :func:`disagreement`); 0 for kernels whose eager operations fix every bit
        self.tolerance = tolerance
        # runs every kernel once, at sizes that take the vectorized and parallel loops, before the first
        # real call: a kernel that disagrees with eager torch turns fusion off before any result depends
        # on it (not half-way through one)
        self._probe = probe
        self._compiled: dict[Callable, Callable] = {}
        self._checked: set[Callable] = set()  # functions whose compiled kernel agreed with eager torch
        self.devices: set[str] = set()  # device types (cpu, cuda) the compiled kernels have run on
        _ALL_KERNELS.add(self)

    @property
    def failure(self) -> str | None:
        """Why fused kernels are off in this process: a failed compilation or a disagreeing kernel (else None)."""
        return _failure

    @property
    def enabled(self) -> bool:
        """Whether calls go to compiled kernels (not switched off, no :attr:`failure`)."""
        return os.environ.get(ENVIRONMENT_SWITCH, "1") != "0" and _failure is None

    def pick(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` compiled (shapes dynamic, so new sizes do not recompile), or itself if disabled."""
        if not self.enabled:
            return function
        if self._probe is not None:
            self._run_probe()
            if not self.enabled:
                return function
        if function not in self._compiled:
            # inductor imports torch's C++ extension helper, which warns that a CPU machine has no CUDA
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            self._compiled[function] = torch.compile(function, dynamic=True)
        return functools.partial(self._call, function, self._compiled[function])

    def _call(self, function: Callable[..., Any], compiled: Callable[..., Any], *args: Any) -> Any:
        global _failure
        if _failure is None:
            # the first call is checked against eager torch on copies of the inputs taken before it, so a
            # kernel that writes into its inputs is compared on the values it was given
            reference = None if function in self._checked else [
                arg.clone() if isinstance(arg, torch.Tensor) else arg for arg in args]
            try:
                result = compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as error:
                _failure = compiler_error(error)
            else:
                if reference is not None:
                    expected = function(*reference)
                    _failure = disagreement(result, expected, getattr(function, "__name__", "kernel"), self.tolerance)
                    if _failure is not None:
                        self._warn()
                        return expected
                    self._checked.add(function)
                self.devices.update(arg.device.type for arg in args if isinstance(arg, torch.Tensor))
                return result
            self._warn()
        return function(*args)

    def _run_probe(self) -> None:
        """The probe with gradients on (a kernel may first be picked inside an autograd forward)."""
        global _failure
        probe, self._probe = self._probe, None
        try:
            with torch.enable_grad():
                probe()
        except Exception as error:  # whatever breaks in the compiled path, the eager one still runs
            if _failure is None:
                _failure = f"checking the compiled kernels failed: {type(error).__name__}: {error}"[:300]
                self._warn()

    def _warn(self) -> None:
        warnings.warn(f"fused kernels unavailable (first needed for {self.purpose}), running eager torch "
                      f"(slower, same formulas): {_failure}", RuntimeWarning, stacklevel=3)


_failure: str | None = None
_ALL_KERNELS: weakref.WeakSet[FusedKernels] = weakref.WeakSet()


def compiler_error(error: BaseException, limit: int = 300) -> str:
    """The cause in one line: torch's headline (``CppCompileError: C++ compile error``) and the compiler's
    first ``error:`` line, not the advice torch appends last."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    headline = next((line for line in lines if not line.startswith(("Set TORCHDYNAMO", "Command:", "backend="))),
                    type(error).__name__)
    first_error = next((line.partition("error:")[2].strip() for line in lines if "error:" in line), "")
    text = f"{headline}: {first_error}" if first_error and first_error not in headline else headline
    return text[:limit]


def disagreement(compiled: Any, eager: Any, name: str, tolerance: float = 1e-3) -> str | None:
    """Why a compiled kernel's outputs are not its eager function's (None when they agree).

    The tolerance is loose on purpose (relative to each output's largest magnitude): fusion reorders
    sums, which moves the last bits; a miscompiled kernel is off by far more or not finite.
    """
    pairs = list(zip(_tensors(compiled), _tensors(eager)))
    if len(pairs) != len(_tensors(eager)):
        return f"compiled {name} returned another structure than eager torch"
    for got, want in pairs:
        got, want = got.detach(), want.detach()
        if got.shape != want.shape:
            return f"compiled {name} returned shape {tuple(got.shape)}, eager torch {tuple(want.shape)}"
        finite = torch.isfinite(want)
        if not torch.equal(torch.isfinite(got), finite):
            return f"compiled {name} gave non-finite values where eager torch did not (or the reverse)"
        scale = float(want[finite].abs().max()) if finite.any() else 0.0
        error = float((got[finite] - want[finite]).abs().max()) if finite.any() else 0.0
        if error > tolerance * max(scale, 1e-30):
            return f"compiled {name} differs from eager torch by {error:.3g} (largest value {scale:.3g})"
    return None


def _tensors(value: Any) -> list[torch.Tensor]:
    return [value] if isinstance(value, torch.Tensor) else [v for v in value if isinstance(v, torch.Tensor)]


def fused_kernel_states() -> dict[str, dict[str, Any]]:
    """For each purpose: whether fusion is on, the device types compiled kernels ran on, why it fell back."""
    return {kernels.purpose: {"enabled": kernels.enabled, "ran_on": sorted(kernels.devices), "failure": kernels.failure}
            for kernels in sorted(_ALL_KERNELS, key=lambda kernels: kernels.purpose)}
