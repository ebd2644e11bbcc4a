"""Training: recipes (YAML + dataclasses), data, losses, embedding cache and the loop.

``steadysam train CONFIG.yaml [key=value ...]`` and ``steadysam embed`` are the entry points;
see docs/training.md. Nothing in ``steadysam.eval`` or ``steadysam.models`` imports this package.
"""

from .config import ConfigError, TrainConfig, load_config
from .losses import normalized_focal_loss, point_loss

__all__ = [
    "ConfigError",
    "TrainConfig",
    "load_config",
    "normalized_focal_loss",
    "point_loss",
    "train",
]


def train(cfg: TrainConfig, resume: bool = True):
    """Run or resume training (see :func:`steadysam.train.loop.train`)."""
    from .loop import train as _train

    return _train(cfg, resume=resume)
