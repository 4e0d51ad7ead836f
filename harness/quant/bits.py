"""Bit specs (docs/quantizer.md, Bit specs): ``wXaY``, ``fp``, and mixed-precision budgets ``mpX`` / ``mpXaY``."""
from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import HarnessError

MIN_BITS, MAX_BITS = 2, 16
ACCEPTED_FORMS = "wXaY (e.g. w4a8), fp, mpX or mpXaY (mixed-precision weight budget), X, Y in 2..16"
_PATTERN = re.compile(r"^(?:w(\d+)a(\d+)|mp(\d+)(?:a(\d+))?)$")


@dataclass(frozen=True)
class BitSpec:
    """Weight and activation bit widths; ``None`` means floating point."""

    weight_bits: int | None
    act_bits: int | None
    mixed_precision: bool = False

    @property
    def is_fp(self) -> bool:
        return self.weight_bits is None

    def __str__(self) -> str:
        if self.is_fp:
            return "fp"
        if self.mixed_precision:
            return f"mp{self.weight_bits}a{self.act_bits}"
        return f"w{self.weight_bits}a{self.act_bits}"


def parse_bits(text: str) -> BitSpec:
    """Parse one bit spec; ``mpX`` alone means activations at X bits too."""
    spec = text.strip().lower()
    if spec == "fp":
        return BitSpec(None, None)
    match = _PATTERN.match(spec)
    if not match:
        raise HarnessError(f"malformed bit spec {text!r}; accepted: {ACCEPTED_FORMS}")
    w, a, mp, mp_a = match.groups()
    weight_bits, act_bits = (int(w), int(a)) if w else (int(mp), int(mp_a or mp))
    for bits in (weight_bits, act_bits):
        if not MIN_BITS <= bits <= MAX_BITS:
            raise HarnessError(f"bit width {bits} in {text!r} is out of range; accepted: {ACCEPTED_FORMS}")
    return BitSpec(weight_bits, act_bits, mixed_precision=mp is not None)
