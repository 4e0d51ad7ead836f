"""Freed tensor memory reused within a cell instead of faulted in again (docs/quantizer.md, Evaluation cost).

Torch's CPU allocator takes every tensor from ``malloc``. glibc hands blocks above its mmap
threshold (at most 32 MB) to the kernel on ``free`` and gets them back as zeroed pages on first
touch: a fake-quant forward allocates one such block per quantizer (DeiT-S's fc2 input at batch 32
is 39 MB) and spends more time faulting its pages in than quantizing. Inside :func:`reused_heap`
glibc serves every block from its heap and keeps what is freed, so the next forward's blocks are
warm; on leaving, the settings go back and the heap's free pages are returned to the system.
No value changes: only where tensors live. Elsewhere than glibc (macOS, musl, a preloaded jemalloc)
or with ``DFQ_HARNESS_HEAP_REUSE=0`` the block runs unchanged.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from typing import Iterator

ENVIRONMENT_SWITCH = "DFQ_HARNESS_HEAP_REUSE"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults
_KEEP_ALL = 2**31 - 1


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library, if it is glibc (the one with ``mallopt`` and ``malloc_trim``)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only
        libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return libc


def heap_reuse_available() -> bool:
    """Whether :func:`reused_heap` changes anything here (glibc, not switched off)."""
    return os.environ.get(ENVIRONMENT_SWITCH, "1") != "0" and _glibc() is not None


_depth = 0  # reused_heap() blocks open: only the outermost sets glibc up and restores it


@contextlib.contextmanager
def reused_heap() -> Iterator[None]:
    """For the block: large blocks from glibc's heap, freed memory kept there for the next allocation."""
    global _depth
    libc = _glibc() if heap_reuse_available() else None
    if libc is None:
        yield
        return
    if _depth == 0:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_ALL)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)
