"""Process defaults for running models on a shared CPU, applied before torch is imported.

OpenMP's default wait policy lets a thread that finished its share of a parallel region spin
for a while before it sleeps. On an idle machine that saves a wake-up per region; on a busy
one the spinning threads take the cores from the threads that still have work (ours and other
processes'), and every region waits for its slowest, descheduled thread. A training run on
this project's 2-core machine went from 1.8 it/s to ~0.1 it/s under load without
``OMP_WAIT_POLICY=PASSIVE`` (``bench/bench_load.py`` measures the encoder). The policy is read
once, when the OpenMP runtime starts, so it must be in the environment before torch loads:
the CLI calls :func:`apply_process_defaults` first thing. An explicit ``OMP_WAIT_POLICY`` is
kept; ``STEADYSAM_PROCESS_DEFAULTS=0`` leaves the environment alone.
"""

from __future__ import annotations

import os
import sys

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_process_defaults() -> dict[str, str]:
    """Set the :data:`DEFAULTS` the environment does not already set; returns what was set.
    Does nothing once torch is imported (the OpenMP runtime has read its settings then)."""
    if os.environ.get("STEADYSAM_PROCESS_DEFAULTS") == "0" or "torch" in sys.modules:
        return {}
    applied = {k: v for k, v in DEFAULTS.items() if k not in os.environ}
    os.environ.update(applied)
    return applied
