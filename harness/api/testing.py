"""The conformance kit (docs/plugins.md, Conformance kit): a plugin's tests import it; the plugin itself
never does, so importing a plugin loads no runner.
"""
from __future__ import annotations

from harness.plugin.conformance import Hooks, cases, run_case

__all__ = [
    "Hooks", "cases", "run_case",
]
