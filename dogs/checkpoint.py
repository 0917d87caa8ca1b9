"""Checkpoints: a dict of state_dicts + config + class names + epoch + metrics. Never pickled objects."""
import os
from pathlib import Path

import torch

from .config import resolve
from .models import build_model

FILENAME = "checkpoint.pt"


def save(state, path):
    """Write `state` to `path` atomically (temp file + rename): a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read(path):
    """The checkpoint dict at `path` (a file, or a folder holding checkpoint.pt), loaded with weights_only=True."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load(path, device="cpu"):
    """(model in eval mode, checkpoint dict): a checkpoint alone is enough to predict."""
    ckpt = read(path)
    config = resolve(ckpt["config"])
    model = build_model(config, len(ckpt["classes"]), load_weights=False)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
