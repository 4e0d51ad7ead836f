import pytest

from harness.errors import HarnessError
from harness.quant.bits import BitSpec, parse_bits


@pytest.mark.parametrize("text, expected", [
    ("w4a8", BitSpec(4, 8)),
    ("W8A8", BitSpec(8, 8)),
    ("w2a16", BitSpec(2, 16)),
    ("fp", BitSpec(None, None)),
    ("mp6", BitSpec(6, 6, mixed_precision=True)),
    ("mp8a6", BitSpec(8, 6, mixed_precision=True)),
])
def test_parse_accepted_forms(text, expected):
    assert parse_bits(text) == expected


def test_round_trip_and_frozen():
    spec = parse_bits("w4a3")
    assert str(spec) == "w4a3" and str(parse_bits("fp")) == "fp" and str(parse_bits("mp6")) == "mp6a6"
    with pytest.raises(AttributeError):
        spec.weight_bits = 8


@pytest.mark.parametrize("text", ["w4", "a8", "w4a8x", "int8", "", "w1a8", "w4a17", "mp", "w-4a8"])
def test_malformed_specs_name_the_accepted_forms(text):
    with pytest.raises(HarnessError) as error:
        parse_bits(text)
    message = str(error.value)
    assert repr(text) in message and "wXaY" in message and "\n" not in message
