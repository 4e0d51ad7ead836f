import pytest
import torch

from harness.fused import ENVIRONMENT_SWITCH, FusedKernels, fused_kernel_states


def test_states_name_the_devices_compiled_kernels_ran_on(monkeypatch):
    monkeypatch.setenv(ENVIRONMENT_SWITCH, "1")
    monkeypatch.setattr(torch, "compile", lambda function, dynamic: function)  # no compiler needed
    kernels = FusedKernels("a device test")
    assert fused_kernel_states()["a device test"] == {"enabled": True, "ran_on": [], "failure": None}
    assert kernels.pick(lambda x, factor: factor * x)(torch.ones(2), 2.0).tolist() == [2.0, 2.0]
    assert fused_kernel_states()["a device test"] == {"enabled": True, "ran_on": ["cpu"], "failure": None}


def test_states_say_why_kernels_fell_back(monkeypatch):
    def broken(function, dynamic):
        def call(*args):
            raise torch._dynamo.exc.BackendCompilerFailed(broken, RuntimeError("no C++ compiler found"), None)
        return call

    monkeypatch.setenv(ENVIRONMENT_SWITCH, "1")
    monkeypatch.setattr(torch, "compile", broken)
    kernels = FusedKernels("a fallback test")
    with pytest.warns(RuntimeWarning):
        kernels.pick(lambda x: 2 * x)(torch.ones(2))
    state = fused_kernel_states()["a fallback test"]
    assert not state["enabled"] and state["ran_on"] == [] and "no C++ compiler found" in state["failure"]
