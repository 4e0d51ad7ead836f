"""The fused-kernel fallback: a compilation failure runs eager torch and says why, once."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.model import fused
from harness.model.fused import ENVIRONMENT_SWITCH, FusedKernels, compiler_error, fused_kernel_states

REPO = Path(__file__).resolve().parents[2]


def _compile_with(monkeypatch, compile_function) -> None:
    """Fusion on, no failure recorded yet, and ``torch.compile`` replaced for this test."""
    monkeypatch.setenv(ENVIRONMENT_SWITCH, "1")
    monkeypatch.setattr(fused, "_failure", None)
    monkeypatch.setattr(torch, "compile", compile_function)


def _broken_compile(function, dynamic):
    def call(*args):
        raise torch._dynamo.exc.BackendCompilerFailed(_broken_compile, RuntimeError("no C++ compiler found"), None)
    return call


def test_a_failed_compilation_warns_once_and_falls_back_to_eager(monkeypatch):
    _compile_with(monkeypatch, _broken_compile)
    kernels, others = FusedKernels("a test"), FusedKernels("another test")
    double = kernels.pick(lambda x: 2 * x)
    with pytest.warns(RuntimeWarning, match="fused kernels unavailable .*a test.*no C\\+\\+ compiler found") as caught:
        assert double(torch.tensor(3.0)) == 6.0
    assert len(caught) == 1
    assert not kernels.enabled and not others.enabled and "no C++ compiler found" in kernels.failure
    assert kernels.pick(abs)(-1) == 1  # later picks, of every instance, are the eager functions themselves
    assert others.pick(abs) is abs


def test_states_name_the_devices_compiled_kernels_ran_on(monkeypatch):
    _compile_with(monkeypatch, lambda function, dynamic: function)  # no compiler needed
    kernels = FusedKernels("a device test")
    assert fused_kernel_states()["a device test"] == {"enabled": True, "ran_on": [], "failure": None}
    assert kernels.pick(lambda x, factor: factor * x)(torch.ones(2), 2.0).tolist() == [2.0, 2.0]
    assert fused_kernel_states()["a device test"] == {"enabled": True, "ran_on": ["cpu"], "failure": None}


def test_states_say_why_kernels_fell_back(monkeypatch):
    _compile_with(monkeypatch, _broken_compile)
    kernels = FusedKernels("a fallback test")
    with pytest.warns(RuntimeWarning):
        kernels.pick(lambda x: 2 * x)(torch.ones(2))
    state = fused_kernel_states()["a fallback test"]
    assert not state["enabled"] and state["ran_on"] == [] and "no C++ compiler found" in state["failure"]


def test_a_compiled_kernel_that_disagrees_with_eager_torch_is_not_used(monkeypatch):
    """A compiler that builds wrong code (NaN, or values off) is caught on the kernel's first call."""
    _compile_with(monkeypatch, lambda function, dynamic: lambda *args: function(*args) * float("nan"))
    kernels = FusedKernels("a miscompiled test")

    def double(x):
        return 2 * x

    with pytest.warns(RuntimeWarning, match="compiled double gave non-finite values where eager torch did not"):
        assert kernels.pick(double)(torch.ones(3)).tolist() == [2.0, 2.0, 2.0]
    assert not kernels.enabled


def test_kernels_whose_operations_fix_every_bit_tolerate_no_difference(monkeypatch):
    """The quantizer's fused pass must give eager torch's bits: one value one step off is a disagreement."""
    _compile_with(monkeypatch, lambda function, dynamic: lambda x: function(x).index_add(0, torch.tensor([5]),
                                                                                          torch.tensor([1e-6])))
    kernels = FusedKernels("an exact test", tolerance=0.0)

    def halve(x):
        return x / 2

    with pytest.warns(RuntimeWarning, match="compiled halve differs from eager torch by 1.01e-06"):
        assert torch.equal(kernels.pick(halve)(torch.ones(8)), torch.full((8,), 0.5))
    assert not kernels.enabled
    assert fused.disagreement(torch.ones(8) * (1 + 1e-6), torch.ones(8), "k", tolerance=0.0) is not None


def test_a_kernel_that_writes_into_its_input_is_checked_on_the_values_it_was_given(monkeypatch):
    """Compiled, the in-place kernel halves once too often: checked against eager torch on the overwritten
    input it would agree with itself (0.25 halved is not 0.5); on a copy taken before the call it does not."""
    _compile_with(monkeypatch, lambda function, dynamic: lambda x: function(function(x)))
    kernels = FusedKernels("an in-place test", tolerance=0.0)

    def halve_(x):
        return x.div_(2)

    with pytest.warns(RuntimeWarning, match="compiled halve_ differs from eager torch by 0.25"):
        assert torch.equal(kernels.pick(halve_)(torch.ones(8)), torch.full((8,), 0.5))
    assert not kernels.enabled


def test_disagreement_tolerates_reordered_sums_and_names_real_differences():
    values = torch.linspace(-3, 3, 101)
    assert fused.disagreement(values * (1 + 1e-6), values, "k") is None
    assert "differs from eager torch by 0.03" in fused.disagreement(values + 0.03, values, "k")
    assert "returned shape (100,)" in fused.disagreement(values[:100], values, "k")
    assert fused.disagreement((values, values), (values, values), "k") is None


def test_compiler_error_is_the_headline_and_the_first_error_line():
    message = textwrap.dedent("""\
        CppCompileError: C++ compile error

        Command:
        g++ /tmp/k.cpp -O3 -o /tmp/k.so

        Output:
        In file included from /tmp/k.cpp:1:
        /tmp/k.cpp:12:5: error: 'at::vec' has not been declared
        /tmp/k.cpp:13:5: error: a later one

        Set TORCHDYNAMO_VERBOSE=1 for the internal stack trace""")
    assert compiler_error(RuntimeError(message)) == "CppCompileError: C++ compile error: 'at::vec' has not been declared"
    no_compiler = "InvalidCxxCompiler: No working C++ compiler found\n\nSet TORCHDYNAMO_VERBOSE=1 for the trace"
    assert compiler_error(RuntimeError(no_compiler)) == "InvalidCxxCompiler: No working C++ compiler found"


FAILING_COMPILER = """#!/bin/sh
# g++ for inductor's compiler check; inductor's generated kernels fail the way a broken header path does
for argument in "$@"; do
  case "$argument" in
    *.cpp) if grep -q kernel "$argument" 2>/dev/null; then
        echo "$argument:12:5: error: 'at::vec' has not been declared" >&2
        echo "$argument:13:5: error: a later one" >&2
        exit 1
      fi;;
  esac
done
exec g++ "$@"
"""

PROGRAM = """
import json, warnings, torch
from harness.priors.patch_similarity import patch_similarity_entropy
from harness.priors.synthesis import total_variation
attn_v = torch.randn(6, 2, 33, 8, generator=torch.Generator().manual_seed(6))
images = torch.randn(3, 2, 9, 11, generator=torch.Generator().manual_seed(8))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    values = [patch_similarity_entropy(attn_v, batch_size=3), total_variation(images)]
print(json.dumps({"warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
                  "values": [v.flatten().tolist() for v in values]}))
"""


def _run(tmp_path: Path, fused_switch: str, compiler: Path) -> dict:
    env = {**os.environ, ENVIRONMENT_SWITCH: fused_switch, "CXX": str(compiler),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "0"}
    result = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which("g++") is None, reason="the stand-in compiler passes inductor's check through g++")
def test_a_real_compiler_failure_names_its_first_error_once_and_gives_the_eager_values(tmp_path):
    compiler = tmp_path / "cc"
    compiler.write_text(FAILING_COMPILER)
    compiler.chmod(0o755)
    broken, eager = _run(tmp_path, "1", compiler), _run(tmp_path, "0", compiler)
    assert len(broken["warnings"]) == 1, broken["warnings"]
    assert "'at::vec' has not been declared" in broken["warnings"][0]
    assert "TORCHDYNAMO_VERBOSE" not in broken["warnings"][0]
    assert eager["warnings"] == [] and broken["values"] == eager["values"]
