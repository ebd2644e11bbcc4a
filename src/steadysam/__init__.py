"""steadysam: Segment Anything, stable under interaction (SAM, FocSAM, Stable-SAM).

The public names load on first use, so ``import steadysam`` (and ``steadysam --help``) does
not import torch.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CheckpointError": "steadysam.weights.formats",
    "build_model": "steadysam.weights.factory",
    "load_checkpoint": "steadysam.weights.files",
    "save_checkpoint": "steadysam.weights.files",
    "list_models": "steadysam.weights.registry",
    "model_record": "steadysam.weights.registry",
    "sam_config": "steadysam.weights.registry",
    "build_sam": "steadysam.models.build",
    "PluginConfig": "steadysam.models.config",
    "RefinerConfig": "steadysam.models.config",
    "SamConfig": "steadysam.models.config",
    "ObjectSession": "steadysam.predictor",
    "Predictor": "steadysam.predictor",
    "fast_paths_enabled": "steadysam.fastpath",
    "use_fast_paths": "steadysam.fastpath",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
