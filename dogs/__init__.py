"""dogs: the trainable — data, models, one epoch loop, checkpoints, predictions."""
from .config import DEFAULTS, resolve
from .trial import trainable

__all__ = ["DEFAULTS", "resolve", "trainable"]
