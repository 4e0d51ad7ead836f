"""What decides a figure besides its configuration: the CPU, its vector extensions, and the kernels that
computed the values (docs/results.md, Kernels; docs/deploy.md, What decides a deployment figure).

torch and ONNX Runtime pick their CPU kernels by the extensions the CPU has (torch also by
``ATEN_CPU_CAPABILITY``), and float results differ between those kernels in their last bits, which a
quantizer can turn into a whole step. A record therefore names them, and the report never averages
results of different kernels as seeds.
"""
from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

from harness.model.fused import ENVIRONMENT_SWITCH, fused_kernel_states

# /proc/cpuinfo flags that choose integer and float kernels: AVX2 (vpmaddubsw, saturating pair sums),
# AVX-512, VNNI (vpdpbusd, exact int32 sums; AVX-512 or AVX form), AMX (tile int8 products)
VECTOR_EXTENSIONS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
EXACT_INT8_EXTENSIONS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def cpu_description() -> dict[str, Any]:
    """The CPU's model name, architecture and which of :data:`VECTOR_EXTENSIONS` it has."""
    model, flags = _cpuinfo(Path("/proc/cpuinfo"))
    return {"model": model or platform.processor() or "unknown", "arch": platform.machine(),
            "extensions": [name for name in VECTOR_EXTENSIONS if name in flags]}


def _cpuinfo(path: Path) -> tuple[str, set[str]]:
    """Model name and flags of the first processor in a Linux ``/proc/cpuinfo`` ('' and none elsewhere)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "", set()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    return (model.group(1).strip() if model else ""), set(flags.group(1).split() if flags else ())


def cpu_class(description: dict[str, Any]) -> str:
    """The CPU class a figure belongs to, e.g. ``x86_64 AVX2``, ``x86_64 AVX-512 VNNI``, ``x86_64 AMX``."""
    extensions = set(description.get("extensions") or ())
    names = [("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx512f", "AVX-512"), ("avx_vnni", "AVX2 VNNI"),
             ("avx2", "AVX2")]
    best = next((label for flag, label in names if flag in extensions), "no AVX2")
    return f"{description.get('arch', 'unknown')} {best}"


def u8s8_pairs_saturate(description: dict[str, Any]) -> bool | None:
    """Whether ONNX Runtime's u8 x s8 integer kernel sums pairs of products in a saturating int16 on this CPU
    (docs/deploy.md, Same integers on every CPU): on x86 with AVX2 but no VNNI or AMX (vpmaddubsw), not
    with VNNI or AMX (int32 sums); None where this is not known (other architectures, no AVX2)."""
    extensions = set(description.get("extensions") or ())
    if extensions & set(EXACT_INT8_EXTENSIONS):
        return False
    return True if "avx2" in extensions else None


def fused_kernel_mode() -> str:
    """``compiled``, ``eager`` (compilation failed or a compiled kernel disagreed) or ``off`` (switched off)."""
    if os.environ.get(ENVIRONMENT_SWITCH, "1") == "0":
        return "off"
    return "eager" if any(state["failure"] for state in fused_kernel_states().values()) else "compiled"


def simulation_kernels(device: torch.device) -> dict[str, Any]:
    """The kernels a cell's simulated values came from: device, torch and its CPU kernel set, fused kernels.

    Read at the end of a cell, so a fused kernel that fell back to eager during it is seen.
    """
    kernels: dict[str, Any] = {"device": device.type, "torch": torch.__version__,
                               "torch_cpu": torch.backends.cpu.get_cpu_capability(), "fused": fused_kernel_mode(),
                               "cpu": cpu_description()}
    if device.type == "cuda":
        kernels["gpu"] = torch.cuda.get_device_name(device)
    return kernels


def kernel_class(kernels: dict[str, Any] | None) -> str:
    """What a leaderboard row must share besides its configuration (docs/results.md, Kernels), as text:
    e.g. ``cpu AVX2, fused compiled, torch 2.14.1``; ``not recorded`` for records made before it was."""
    if not isinstance(kernels, dict) or not kernels:
        return "not recorded"
    where = f"cuda {kernels.get('gpu', '')}".strip() if kernels.get("device") == "cuda" else \
        f"{kernels.get('device', '?')} {kernels.get('torch_cpu', '?')}"
    return f"{where}, fused {kernels.get('fused', '?')}, torch {kernels.get('torch', '?')}"
