"""steadysam: Segment Anything, stable under interaction (SAM, FocSAM, Stable-SAM)."""

from .models.build import MODEL_BUILDERS, MODEL_CONFIGS, build_sam
from .models.config import RefinerConfig, SamConfig
from .predictor import ObjectSession, Predictor
from .weights.factory import build_model
from .weights.files import CheckpointError, load_checkpoint, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    "MODEL_BUILDERS",
    "MODEL_CONFIGS",
    "ObjectSession",
    "Predictor",
    "RefinerConfig",
    "SamConfig",
    "build_model",
    "build_sam",
    "__version__",
]
