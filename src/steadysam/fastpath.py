"""One switch between the fast paths and the reference math.

The model code has readable reference implementations (plain ``nn.Module`` calls, the math of
official segment-anything / FocSAM) and, for inference on CPU, fast paths (fused oneDNN linears,
reassociated attention, batched windows). The fast paths are used by default; the reference
path is what the FLOP counter, the parity tests and the ONNX exporter need::

    with steadysam.use_fast_paths(False):   # or STEADYSAM_FAST_PATHS=0 in the environment
        model.encode(images)

The override is per thread (a server answering in several threads keeps each request's choice);
the environment variable sets the default for every thread. ``reference_math()`` is
``use_fast_paths(False)``.

Every fast path consults this switch, and a fast path that reads a submodule's weights (fused
projections, reassociated attention) only runs when that submodule is a plain ``nn.Linear`` /
convolution without hooks (:func:`steadysam.models.common.is_plain`): a wrapped, quantised,
LoRA-style or hooked module is always called as a module. A private op that fails when called
is reported once and replaced by the reference path (:func:`private_op_failed`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

ENV_VAR = "STEADYSAM_FAST_PATHS"
_local = threading.local()


def env_switch(name: str) -> bool:
    """An on/off environment variable that defaults to on: 1/true/yes/on or unset, 0/false/no/off;
    anything else is a ValueError naming the variable."""
    value = os.environ.get(name, "1").strip().lower()
    if value in ("1", "true", "yes", "on", ""):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 0 or 1, not {value!r}")


def _default() -> bool:
    return env_switch(ENV_VAR)


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


def reference_math() -> contextlib.AbstractContextManager[None]:
    """``use_fast_paths(False)``: within the block (this thread), only the reference math."""
    return use_fast_paths(False)


# -- private ops that fail at call time ------------------------------------------------------
# A private op (``torch.ops.mkldnn.*``) can exist and still fail when called: a build without
# that kernel for a dtype, an ISA oneDNN does not support, a layout it refuses. The first
# failure is reported once and the op is then never tried again in this process: the caller
# takes its reference path, which computes the same function.
_failed: dict[str, str] = {}
_failed_lock = threading.Lock()


def private_op_usable(name: str) -> bool:
    """False once ``name`` failed at call time in this process (see :func:`private_op_failed`)."""
    return name not in _failed


def private_op_failed(name: str, error: BaseException) -> None:
    """Record that the private op ``name`` raised ``error``; warns once (``RuntimeWarning``)."""
    with _failed_lock:
        if name in _failed:
            return
        _failed[name] = f"{type(error).__name__}: {error}"
    warnings.warn(
        f"steadysam: the fast path {name} failed ({type(error).__name__}: "
        f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no message'}); "
        "using the reference math from now on in this process",
        RuntimeWarning,
        stacklevel=3,
    )


def failed_private_ops() -> dict[str, str]:
    """The private ops that failed in this process: name -> the error, as text."""
    return dict(_failed)


def _reset_failures() -> None:
    """Forget recorded failures (tests)."""
    with _failed_lock:
        _failed.clear()
