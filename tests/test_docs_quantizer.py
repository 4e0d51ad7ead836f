"""docs/quantizer.md names every choice the quantizer's code offers: profiles, post-softmax quantizers,
ActQuantizer modes and the observers."""
from __future__ import annotations

import inspect
import typing
from pathlib import Path

from harness.quant import observers
from harness.quant.convert import ATTN_QUANTIZERS, PROFILES
from harness.quant.modules import Mode

QUANTIZER_DOC = Path(__file__).resolve().parents[1] / "docs" / "quantizer.md"


def section(heading: str) -> str:
    return QUANTIZER_DOC.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_every_profile_and_attention_quantizer_is_documented():
    profiles = section("Profiles")
    assert [name for name in PROFILES.names() if f"| `{name}`" not in profiles] == []
    assert [name for name in ATTN_QUANTIZERS if f"`{name}`" not in profiles] == []


def test_every_quantizer_mode_and_observer_is_documented():
    kinds = section("Quantizer kinds")
    assert [mode for mode in typing.get_args(Mode) if f"`{mode}`" not in kinds] == []
    classes = [name for name, cls in inspect.getmembers(observers, inspect.isclass)
               if cls.__module__ == observers.__name__]
    assert classes and [name for name in classes if f"`{name}" not in section("Observers")] == []
