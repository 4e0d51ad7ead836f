"""Freed heap memory is reused inside a cell and handed back after it (harness.run.memory)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.run.memory import heap_reuse_available

pytestmark = pytest.mark.skipif(not heap_reuse_available(), reason="glibc's allocator is not in use here")

# Page faults of rounds of allocating, touching and freeing a 40 MB tensor inside reused_heap(), after a
# nested block in it closed, and after it, with the resident memory just before and just after leaving it.
# In a fresh process, so the settings meet glibc's defaults.
_SCRIPT = """
import json, resource, torch
from harness.run.memory import reused_heap

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensor = torch.empty(10 * 2**20)
    tensor.fill_(1.0)
    del tensor
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def resident_pages():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1])

with reused_heap():
    inside = [faults() for _ in range(40)]
    with reused_heap():  # a nested block leaves the outer one's settings in place
        pass
    nested = [faults() for _ in range(3)]
    resident_inside = resident_pages()
resident_after = resident_pages()
after = faults()
print(json.dumps({"inside": inside, "nested": nested, "after": after, "released": resident_inside - resident_after}))
"""


def test_large_blocks_are_reused_inside_and_returned_after():
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    faults = json.loads(result.stdout.strip().splitlines()[-1])
    pages = 40 * 2**20 // 4096
    assert faults["inside"][0] > 0.9 * pages  # the first round faults its pages in
    # The heap grows until a freed block is left whole for the next round (a few rounds: small
    # allocations may split the first ones); from then on rounds find their pages warm.
    assert max(faults["inside"][-3:]) < 0.05 * pages
    assert max(faults["nested"]) < 0.05 * pages  # still so after a nested block closed
    # Leaving the block hands the kept pages back: resident memory drops by at least the block, and
    # the next round faults its pages in again (from the system or from trimmed heap alike).
    assert faults["released"] > 0.9 * pages
    assert faults["after"] > 0.9 * pages
