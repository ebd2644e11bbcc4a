"""Compile and load the C kernels (``*.c`` beside this file) once per machine.

A kernel library is compiled with the system C compiler (``$CC`` or ``cc``) the first time a
process asks for it, in about a second, into ``$STEADYSAM_HOME/native`` (default
``~/.cache/steadysam/native``), never into the installed package. The file name carries a
hash of the source, the compiler, the flags and the CPU (``-march=native`` code must not run on
another CPU), and is written atomically, so concurrent processes and machines sharing a home
folder each get a matching library. It links OpenMP by its soname, so inside a process that
has imported torch it runs on PyTorch's own OpenMP runtime and threads.

Where there is no compiler, the compile fails, or ``STEADYSAM_NATIVE=0``, :func:`load` returns
None and callers keep their PyTorch fast paths (the same function, a few passes more); the
reason is logged once at INFO level, and :func:`status` returns it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from ..atomic import atomic_path
from ..fastpath import env_switch

ENV_VAR = "STEADYSAM_NATIVE"
_HERE = Path(__file__).resolve().parent
log = logging.getLogger(__name__)

# Tried in order: the first is the fast build; the next ones drop what some compilers lack
# (Apple clang has no -fopenmp, some targets no -march=native).
_FLAG_SETS = (
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp"],
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3"],
)
_COMMON = ["-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-std=gnu11"]

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}
_reasons: dict[str, str] = {}


def enabled() -> bool:
    """Whether compiled kernels may be used (``STEADYSAM_NATIVE``, default 1)."""
    return env_switch(ENV_VAR)


def load(name: str) -> ctypes.CDLL | None:
    """The compiled library of ``<name>.c`` (built on first use), or None where it cannot be
    built or loaded (see :func:`status`)."""
    if not enabled():
        return None
    if name in _loaded:
        return _loaded[name]
    with _lock:
        if name not in _loaded:
            try:
                _loaded[name] = ctypes.CDLL(str(_build(name)))
            except (OSError, RuntimeError) as e:
                _loaded[name] = None
                _reasons[name] = str(e)
                log.info("compiled kernels %s unavailable, using PyTorch ops: %s", name, e)
    return _loaded[name]


def status(name: str) -> str:
    """One line on ``name``'s kernels: where they were loaded from, or why not."""
    if not enabled():
        return f"off ({ENV_VAR}=0)"
    lib = load(name)
    if lib is not None:
        return f"compiled ({lib._name})"
    return f"unavailable: {_reasons.get(name, 'unknown reason')}"


def _compiler() -> str:
    cc = os.environ.get("CC") or "cc"
    path = shutil.which(cc)
    if path is None:
        raise RuntimeError(f"no C compiler: {cc!r} is not an executable on PATH (set CC)")
    return path


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's feature flags (Linux) or its description."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _build(name: str) -> Path:
    from ..weights.hub import cache_dir  # the weights package imports the models: not at load

    source = _HERE / f"{name}.c"
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    errors = []
    for flags in _FLAG_SETS:
        key = "\n".join([source.read_text(), cc, version, " ".join(flags), _cpu_signature()])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        target = cache_dir() / "native" / f"{name}-{digest}.so"
        if target.exists():
            return target
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"{name}.so"
            cmd = [cc, *flags, *_COMMON, str(source), "-o", str(out), "-lm"]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode == 0 and out.is_file():
                with atomic_path(target, suffix=".so") as tmp_target:
                    shutil.copyfile(out, tmp_target)
                return target
            last = run.stderr.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
            if run.returncode == 0:
                last = ["exited 0 without writing the library"]
            errors.append(f"{' '.join(flags)}: {last[0]}")
    raise RuntimeError(f"{name}.c did not compile with {cc}: " + "; ".join(errors))
