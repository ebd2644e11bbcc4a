"""One switch between the fast paths and the reference math.

The model code has readable reference implementations (plain ``nn.Module`` calls, the math of
official segment-anything / FocSAM) and, for inference on CPU, fast paths (fused oneDNN linears,
reassociated attention, batched windows). The fast paths are used by default; the reference
path is what the FLOP counter, the parity tests and the ONNX exporter need::

    with steadysam.use_fast_paths(False):   # or STEADYSAM_FAST_PATHS=0 in the environment
        model.encode(images)

The override is per thread (a server answering in several threads keeps each request's choice);
the environment variable sets the default for every thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

ENV_VAR = "STEADYSAM_FAST_PATHS"
_local = threading.local()


def _default() -> bool:
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value in ("1", "true", "yes", "on", ""):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENV_VAR} must be 0 or 1, not {value!r}")


def fast_paths_enabled() -> bool:
    """Whether the fast paths may be used in this thread now."""
    override = getattr(_local, "enabled", None)
    return _default() if override is None else override


@contextmanager
def use_fast_paths(enabled: bool = True) -> Iterator[None]:
    """Within the block (this thread only), use the fast paths (``True``) or only the
    reference math (``False``); restores the previous choice on exit."""
    if not isinstance(enabled, bool):
        raise TypeError(f"use_fast_paths takes True or False, not {enabled!r}")
    previous = getattr(_local, "enabled", None)
    _local.enabled = enabled
    try:
        yield
    finally:
        _local.enabled = previous
