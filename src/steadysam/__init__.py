"""steadysam: Segment Anything, stable under interaction (SAM, FocSAM, Stable-SAM)."""

from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .factory import build_model
from .models.build import MODEL_BUILDERS, MODEL_CONFIGS, build_sam
from .models.config import RefinerConfig, SamConfig
from .predictor import ObjectSession, Predictor

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
