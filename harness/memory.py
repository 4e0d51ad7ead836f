"""Large CPU tensors on 2 MB pages: fresh allocations are what fake quantization mostly costs on CPU.

Every quantizer writes a new tensor. torch's CPU allocator takes large blocks straight from the
kernel, which hands out 4 KB zeroed pages on first touch: writing a fresh 39 MB tensor took 21 ms,
the same values into an existing one 4 ms (one core, DeiT-S's fc2 input at batch 32). torch's
``THP_MEM_ALLOC_ENABLE=1`` aligns blocks of 2 MB and more to 2 MB and asks for transparent huge pages
(7.7 ms). Allocation moves no value: results are the same bits.
"""
from __future__ import annotations

import os

HUGE_PAGES_SWITCH = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages() -> None:
    """Turn torch's huge-page allocation on unless the environment says otherwise. torch reads the
    switch once, at its first large allocation: call this before any model is built."""
    os.environ.setdefault(HUGE_PAGES_SWITCH, "1")
