"""Compiled CPU kernels for the few places where fusing passes matters (build.py says how they
are built and when they are not). Each wrapper takes and returns torch tensors."""

from __future__ import annotations

from .build import enabled, load, status
from .plugin import PluginKernels, plugin_kernels

__all__ = ["PluginKernels", "enabled", "load", "plugin_kernels", "status"]
