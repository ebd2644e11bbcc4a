"""Training: recipes (YAML + dataclasses), data, losses, embedding cache and the loop.

``steadysam train CONFIG.yaml [key=value ...]`` and ``steadysam embed`` are the entry points;
see docs/training.md. Nothing in ``steadysam.eval`` or ``steadysam.models`` imports this package.
"""

from steadysam.lazy import lazy_exports

_EXPORTS = {
    "ConfigError": "steadysam.train.config",
    "TrainConfig": "steadysam.train.config",
    "load_config": "steadysam.train.config",
    "normalized_focal_loss": "steadysam.train.losses",
    "point_loss": "steadysam.train.losses",
}

__all__ = [
    "ConfigError",
    "TrainConfig",
    "load_config",
    "normalized_focal_loss",
    "point_loss",
    "train",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


def train(cfg, resume: bool = True):
    """Run or resume training (see :func:`steadysam.train.loop.train`)."""
    from .loop import train as _train

    return _train(cfg, resume=resume)
