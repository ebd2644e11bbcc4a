"""Ask glibc's malloc to keep freed memory in the process for reuse.

Inference frees and re-allocates tensors of a few MB to a few tens of MB many times per image
and per click. With glibc's default settings much of that memory goes back to the kernel and
returns as fresh pages, and the page faults cost ~20 % of a decoder click and ~0.4 s of a ViT-B
embedding on a 2-core CPU (``bench/bench_sam.py`` prints both settings). The settings are
process-wide, so ``Predictor`` and the CLI apply them once; set ``STEADYSAM_MALLOC_TUNING=0``
to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameter numbers from <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def retain_freed_memory(
    trim_threshold_mb: int = 1024, top_pad_mb: int = 64, mmap_threshold_mb: int = 32
) -> bool:
    """Apply the settings (once per process); True when glibc accepted them.

    Blocks up to ``mmap_threshold_mb`` (glibc's maximum) come from the heap instead of their
    own mappings, and up to ``trim_threshold_mb`` of free heap stays mapped. Larger blocks
    are still mapped and unmapped one by one, so peak memory is unchanged."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("STEADYSAM_MALLOC_TUNING") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, mmap_threshold_mb << 20),
        (_M_TRIM_THRESHOLD, trim_threshold_mb << 20),
        (_M_TOP_PAD, top_pad_mb << 20),
    )
    _applied = all(mallopt(param, value) == 1 for param, value in settings)
    return _applied
