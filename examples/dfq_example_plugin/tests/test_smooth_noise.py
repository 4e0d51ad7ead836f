"""The harness's conformance kit on this plugin: one import, one parametrized test."""
import pytest

from harness.api.testing import cases, run_case


@pytest.mark.parametrize("kind, name", cases(names=["smooth_noise"]))
def test_conforms(kind, name):
    run_case(kind, name)
