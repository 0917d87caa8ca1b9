"""dogs: the trainable — data, models, one epoch loop, checkpoints, predictions.

`dogs.config` (and so validating a search space) never imports torch: the trainable is imported on first use.
"""
from .config import DEFAULTS, resolve

__all__ = ["DEFAULTS", "resolve", "trainable"]


def __getattr__(name):
    """`dogs.trainable` imports torch and the training code only when a trial asks for it."""
    if name == "trainable":
        from .ray_trainable import trainable
        return trainable
    raise AttributeError(f"module 'dogs' has no attribute {name!r}")
