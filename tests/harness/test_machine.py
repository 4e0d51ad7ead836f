"""harness.store.machine: the CPU, its vector extensions and the kernels a result names (docs/results.md, Kernels)."""
from __future__ import annotations

import pytest
import torch

from harness.model import fused
from harness.store import machine

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx f16c avx2 fma bmi2 sha_ni
"""
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t: avx2 avx512f avx512_vnni avx_vnni amx_int8 amx_tile\n"


@pytest.mark.parametrize("text, model, extensions, label", [
    (EPYC, "AMD EPYC 7B13", ["avx2"], "x86_64 AVX2"),
    (SAPPHIRE, "Intel(R) Xeon(R) Platinum 8480+", ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"],
     "x86_64 AMX"),
    ("model name\t: Intel Xeon\nflags\t: avx2 avx512f\n", "Intel Xeon", ["avx2", "avx512f"], "x86_64 AVX-512"),
    ("model name : Intel Xeon\nflags : avx2 avx512f avx512_vnni\n", "Intel Xeon", ["avx2", "avx512f", "avx512_vnni"],
     "x86_64 AVX-512 VNNI"),
])
def test_cpu_model_and_extensions_are_read_from_cpuinfo(tmp_path, text, model, extensions, label):
    (tmp_path / "cpuinfo").write_text(text)
    found_model, flags = machine._cpuinfo(tmp_path / "cpuinfo")
    assert found_model == model
    description = {"arch": "x86_64", "extensions": [e for e in machine.VECTOR_EXTENSIONS if e in flags]}
    assert description["extensions"] == extensions and machine.cpu_class(description) == label


def test_cpuinfo_missing_gives_no_extensions(tmp_path):
    assert machine._cpuinfo(tmp_path / "absent") == ("", set())
    assert machine.cpu_class({"arch": "aarch64", "extensions": []}) == "aarch64 no AVX2"


def test_fused_kernel_mode_says_off_eager_or_compiled(monkeypatch):
    monkeypatch.setenv(fused.ENVIRONMENT_SWITCH, "0")
    assert machine.fused_kernel_mode() == "off"
    monkeypatch.setenv(fused.ENVIRONMENT_SWITCH, "1")
    monkeypatch.setattr(fused, "_failure", None)
    assert machine.fused_kernel_mode() == "compiled"
    kernels = fused.FusedKernels("test purpose")  # registered, so its failure is seen
    monkeypatch.setattr(fused, "_failure", "inductor: no C++ compiler")
    assert kernels.failure and machine.fused_kernel_mode() == "eager"


def test_simulation_kernels_name_this_process_and_make_one_class():
    kernels = machine.simulation_kernels(torch.device("cpu"))
    assert kernels["torch_cpu"] == torch.backends.cpu.get_cpu_capability() and kernels["torch"] == torch.__version__
    assert kernels["cpu"] == machine.cpu_description()
    assert machine.kernel_class(kernels) == (f"cpu {kernels['torch_cpu']}, fused {kernels['fused']}, "
                                             f"torch {torch.__version__}")
    assert machine.kernel_class({**kernels, "device": "cuda", "gpu": "NVIDIA H100"}).startswith("cuda NVIDIA H100, ")
    assert machine.kernel_class(None) == machine.kernel_class("x") == "not recorded"
