"""Weights: from a model name or a file to a loaded model, and back to a file.

The pipeline, one module per step:

``formats``    key layouts of SAM / FocSAM / steadysam files: detection and the one rename table
``inference``  the architecture (:class:`SamConfig`) of a bare state dict, from tensor shapes
``files``      reading and writing weight files (and Stable-SAM plugin files), strict checks
``hub``        published weights: verified, cached downloads
``factory``    :func:`build_model`: a model from a name, a file, or both

The shipped demo weights (``*.safetensors``) live in this folder too.
"""

from .factory import build_model
from .files import (
    describe_checkpoint,
    load_checkpoint,
    load_plugin_checkpoint,
    save_checkpoint,
    save_plugin_checkpoint,
)
from .formats import CheckpointError
from .inference import infer_config

__all__ = [
    "CheckpointError",
    "build_model",
    "describe_checkpoint",
    "infer_config",
    "load_checkpoint",
    "load_plugin_checkpoint",
    "save_checkpoint",
    "save_plugin_checkpoint",
]
