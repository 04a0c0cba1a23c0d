"""Give freed memory back to the operating system between stages.

glibc's malloc raises its mmap threshold after large frees, so the many mid-sized tensors of a
capture or a quantization (a few MiB each) come from the heap; once freed, that memory stays in
the process (resident, counted against the machine) until malloc_trim returns it. At GPT-2
small's shape that is ~0.2 GiB after the captures of one pair (bench/scale.py). Elsewhere (macOS,
musl) this only collects garbage.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Collect garbage, then hand the heap's free pages back (glibc), so a stage's leftovers do
    not add to the next stage's peak."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
