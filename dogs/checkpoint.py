"""Checkpoints: a dict of state_dicts + config + class names + epoch + metrics. Never pickled objects.

Every way a checkpoint can be unusable is one CheckpointError line: missing, truncated, not a torch file,
holding pickled code (refused by weights_only=True, never loaded), not ours, or from another run.
"""
import json
import zipfile
from pickle import UnpicklingError  # what torch.load(weights_only=True) raises for pickled code
from pathlib import Path

import torch

from .config import SCHEMA, resolve
from .errors import CheckpointError
from .files import atomic_path
from .models import build_model

FILENAME = "checkpoint.pt"
KEYS = ("model", "optimizer", "config", "classes", "epoch", "metrics")
# The config keys that may differ between a checkpoint and the run that continues it (dogs.train --resume, a
# Tune trial restored from its checkpoint: the same config). Every other key must match, because it changes the
# model or what it sees, the optimizer (its saved state holds lr, backbone_lr, weight_decay: a new value would be
# silently dropped), the schedule and its position, the seeded draws (shuffle, dropout, mixing), or what "best"
# means. A difference is one CheckpointError line naming each key with both values (resume_problem).
RESUME_MAY_CHANGE = {
    "epochs": "train longer (or stop at an epoch not yet trained) with schedule constant; cosine and onecycle "
              "span the epochs, so another count would change every step's learning rate",
    "data": "it must be the same folder with the same classes, however it is written",
    "cache_dir": "where the caches are; they are keyed on what they hold",
    "channels_last": "memory layout: the same model, other kernels",
    "compile": "torch.compile: the same model, other kernels",
}


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


def resume_problem(ckpt, config, classes, root):
    """None, or why a run of `config` on `classes` read from `root` cannot continue checkpoint `ckpt`: one line
    naming each difference with both values, what may change (RESUME_MAY_CHANGE), and how to continue it."""
    try:
        saved = resolve(ckpt["config"])   # a checkpoint of an older version: the keys it lacks had their defaults
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"its config is not one of this version ({err.args[0] if err.args else err})") from None
    diffs = []
    if list(ckpt["classes"]) != list(classes):
        diffs.append(f"classes ({len(ckpt['classes'])} in the checkpoint: {_short(ckpt['classes'])}; "
                     f"{len(classes)} in the data: {_short(classes)})")
    demo = saved["data"] is None and config["data"] is None  # the demo's folder is per node: compare its classes
    if not demo and ckpt.get("root") is not None and str(ckpt["root"]) != str(root):
        diffs.append(f"data folder (checkpoint: {ckpt['root']}, now: {root})")
    changed = {key: f"{key} (checkpoint: {saved[key]!r}, now: {config[key]!r})"
               for key in SCHEMA if key not in RESUME_MAY_CHANGE and saved[key] != config[key]}
    if config["epochs"] < ckpt["epoch"]:
        changed["epochs"] = f"epochs (checkpoint: {ckpt['epoch']} trained, now: {config['epochs']})"
    elif config["schedule"] != "constant" and saved["epochs"] != config["epochs"]:
        changed["epochs"] = (f"epochs (checkpoint: {saved['epochs']}, now: {config['epochs']}; "
                             f"the {config['schedule']} schedule spans them)")
    diffs += changed.values()
    if not diffs:
        return None
    may = ", ".join("epochs (schedule constant)" if key == "epochs" else key for key in RESUME_MAY_CHANGE if key != "data")
    fix = (f"the checkpoint's values: --set {' '.join(f'{key}={_as_set(saved[key])}' for key in changed)}" if changed
           else "the data it was trained on")
    return (f"the checkpoint is from another run: {'; '.join(diffs)} differ. A resumed run continues the checkpoint's "
            f"weights, optimizer state and schedule, so only {may} may change; to continue it, give {fix}")


def _as_set(value):
    """A config value as --set reads it back: lr=0.001, model=cnn, seed=null, augment=true."""
    return value if isinstance(value, str) else json.dumps(value)


def _short(names, count=4):
    names = list(names)
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")
