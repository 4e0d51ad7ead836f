"""AdaLog's options against the bit widths they must search (docs/methods.md, AdaLog)."""
from __future__ import annotations

import pytest

from harness.errors import HarnessError
from harness.run.grid import GridSpec, expand


def _grid(bits: str, eq_n: int) -> GridSpec:
    return GridSpec(methods=("adalog",), tasks=("digits",), models=("digits_vit_seed0",), bits=(bits,),
                    calibrator_options={"adalog.eq_n": eq_n})


def test_a_search_without_a_candidate_per_zero_point_is_refused_before_the_grid():
    """At 8-bit weights the patch embedding's search has 128 zero points: eq_n 32 leaves it no scale to try."""
    with pytest.raises(HarnessError) as error:
        expand(_grid("w8a8", 32))
    assert str(error.value) == ("calibrator 'adalog' at w8a8: eq_n 32 gives the patch embedding's 8-bit weight search "
                                "no candidate scale for each of its 128 zero points; use eq_n >= 128")


@pytest.mark.parametrize("bits, eq_n", [("w8a8", 128), ("w6a6", 32), ("w4a8", 32), ("fp", 32)])
def test_searches_with_a_candidate_per_zero_point_expand(bits, eq_n):
    assert [str(cell.bits) for cell in expand(_grid(bits, eq_n))] == [bits]
