"""Checkpoints: a dict of state_dicts + config + class names + epoch + metrics. Never pickled objects.

Every way a checkpoint can be unusable is one CheckpointError line: missing, truncated, not a torch file,
holding pickled code (refused by weights_only=True, never loaded), not ours, or from another run.
"""
import zipfile
from pickle import UnpicklingError  # what torch.load(weights_only=True) raises for pickled code
from pathlib import Path

import torch

from .config import resolve
from .errors import CheckpointError
from .files import atomic_path
from .models import build_model

FILENAME = "checkpoint.pt"
KEYS = ("model", "optimizer", "config", "classes", "epoch", "metrics")
# what the model is and what it sees: resuming with any of these changed would mix two runs
MODEL_KEYS = ("model", "weights", "head_on", "head_width", "unfreeze", "image_size", "normalize")


def save(state, path):
    """Write `state` to `path` atomically: a crash or Ctrl-C never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def read(path):
    """The checkpoint dict at `path` (a file, or a folder holding checkpoint.pt), loaded with weights_only=True."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    # torch.save writes a zip archive: anything else is truncated or another kind of file
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a checkpoint (truncated, or not a file written by torch.save)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except UnpicklingError:
        raise CheckpointError(f"{path} holds pickled code or objects, not only weights: refused, nothing in it "
                              "was run (checkpoints of dogs hold tensors, numbers and strings only)") from None
    except Exception as err:  # a damaged archive: torch's own reason, first line only
        raise CheckpointError(f"{path} cannot be read ({str(err).splitlines()[0]})") from None
    missing = [key for key in KEYS if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of dogs (it has no {missing})")
    return ckpt


def load(path, device="cpu"):
    """(model in eval mode, checkpoint dict): a checkpoint alone is enough to predict."""
    ckpt = read(path)
    try:
        config = resolve(ckpt["config"])
        model = build_model(config, len(ckpt["classes"]), load_weights=False)
        model.load_state_dict(ckpt["model"])
    except (KeyError, ValueError, RuntimeError) as err:
        lines = [line.strip() for line in str(err.args[0] if err.args else err).splitlines() if line.strip()]
        raise CheckpointError(f"{path}: its weights do not fit its config and {len(ckpt['classes'])} classes "
                              f"({lines[-1][:200] if lines else type(err).__name__})") from None
    return model.to(device).eval(), ckpt


def differences(ckpt, config, classes, root):
    """What differs between a checkpoint and a run about to continue it: classes, data folder, model keys."""
    try:
        saved = resolve(ckpt["config"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"its config is not one of this version ({err.args[0] if err.args else err})") from None
    diffs = []
    if list(ckpt["classes"]) != list(classes):
        diffs.append(f"classes ({len(ckpt['classes'])} in the checkpoint: {_short(ckpt['classes'])}; "
                     f"{len(classes)} in the data: {_short(classes)})")
    demo = saved["data"] is None and config["data"] is None  # the demo's folder is per node: compare its classes
    if not demo and ckpt.get("root") is not None and str(ckpt["root"]) != str(root):
        diffs.append(f"data folder (checkpoint: {ckpt['root']}, now: {root})")
    diffs += [f"{key} (checkpoint: {saved[key]!r}, now: {config[key]!r})"
              for key in MODEL_KEYS if saved[key] != config[key]]
    return diffs


def _short(names, count=4):
    names = list(names)
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")
