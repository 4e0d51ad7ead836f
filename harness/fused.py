"""Elementwise-then-reduce kernels fused by ``torch.compile``, with the eager function as fallback.

Eager torch makes one memory pass per operation; a kernel such as the patch-similarity KDE
(subtract, square, scale, clamp, exp, sum, for each of 10 points) spends its time there. Inductor
fuses the chain into one loop over the samples; no formula changes, since the functions compiled
are the eager ones (differentiable ones get a fused backward too). Compiling needs a C++ compiler
on CPU (Triton on GPU); where it fails, the eager function runs and one warning says why.
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

    A compilation failure anywhere turns every ``FusedKernels`` to eager torch for the rest of the
    process, with one warning naming the compiler's first error.
    """

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose
        self._compiled: dict[Callable, Callable] = {}
        self.devices: set[str] = set()  # device types (cpu, cuda) the compiled kernels have run on
        _ALL_KERNELS.add(self)

    @property
    def failure(self) -> str | None:
        """Why compilation failed in this process (None while it has not)."""
        return _failure

    @property
    def enabled(self) -> bool:
        """Whether calls go to compiled kernels (not switched off, no compilation has failed)."""
        return os.environ.get(ENVIRONMENT_SWITCH, "1") != "0" and _failure is None

    def pick(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` compiled (shapes dynamic, so new sizes do not recompile), or itself if disabled."""
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
            try:
                result = compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as error:
                _failure = compiler_error(error)
                warnings.warn(f"fused kernels unavailable (first needed for {self.purpose}), running eager torch "
                              f"(slower, same formulas): {_failure}", RuntimeWarning, stacklevel=2)
            else:
                self.devices.update(arg.device.type for arg in args if isinstance(arg, torch.Tensor))
                return result
        return function(*args)


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


def fused_kernel_states() -> dict[str, dict[str, Any]]:
    """For each purpose: whether fusion is on, the device types compiled kernels ran on, why it fell back."""
    return {kernels.purpose: {"enabled": kernels.enabled, "ran_on": sorted(kernels.devices), "failure": kernels.failure}
            for kernels in sorted(_ALL_KERNELS, key=lambda kernels: kernels.purpose)}
