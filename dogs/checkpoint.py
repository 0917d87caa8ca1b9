"""Checkpoints: a dict of state_dicts + config + class names + epoch + metrics. Never pickled objects.

A frozen prefix (a backbone that never trains) is not stored: the checkpoint holds what trains (the tail
and its optimizer) and the prefix's identity, {"model", "weights", "hash"}. Loading rebuilds the prefix as
the run built it (pretrained weights by name or path, or the random weights of its seed) and checks its
content hash: a ResNet18 trial's checkpoint is a few hundred KB instead of 45 MB, and still predicts on
its own. A prefix that cannot be rebuilt (random weights without a seed) is stored as before.

Every way a checkpoint can be unusable is one CheckpointError line: missing, truncated, not a torch file,
holding pickled code (refused by weights_only=True, never loaded), not ours, from another run, or whose
frozen prefix cannot be found or is not the one it was trained with.
"""
import json
import zipfile
from pickle import UnpicklingError  # what torch.load(weights_only=True) raises for pickled code
from pathlib import Path

import torch

from .config import SCHEMA, keys_where, resolve
from .errors import CheckpointError, UserError
from .features import prefix_hash
from .files import atomic_path
from .models import build_model

FILENAME = "checkpoint.pt"
KEYS = ("model", "optimizer", "config", "classes", "epoch", "metrics")
FROZEN = ("model", "weights", "hash")   # a checkpoint's "frozen": what identifies the prefix it leaves out


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
    frozen = ckpt.get("frozen")
    if frozen is not None and not (isinstance(frozen, dict) and all(isinstance(frozen.get(k), str) for k in FROZEN)):
        raise CheckpointError(f"{path} is not a checkpoint of dogs (its frozen prefix is {str(frozen)[:80]}, not "
                              f"{{{', '.join(FROZEN)}}})")
    return ckpt


def frozen_identity(config, model):
    """{"model", "weights", "hash"} of the model's frozen prefix when a checkpoint can leave it out (it can be
    rebuilt from the config: pretrained weights, or random weights of a seed); None otherwise."""
    if len(model.frozen) == 0 or (str(config["weights"]).lower() == "none" and config["seed"] is None):
        return None
    return {"model": config["model"], "weights": str(config["weights"]), "hash": prefix_hash(model.frozen)}


def trained_weights(model, frozen):
    """The model's state_dict as a checkpoint holds it: without the frozen prefix when `frozen` identifies it."""
    state = model.state_dict()
    return state if frozen is None else {k: v for k, v in state.items() if not k.startswith("frozen.")}


def check_frozen(model, frozen, where):
    """Refuse a model whose frozen prefix is not the one identified by `frozen` (a checkpoint's)."""
    got = prefix_hash(model.frozen)
    if got != frozen["hash"]:
        why = ("this torch or torchvision version draws the random weights of its seed otherwise"
               if frozen["weights"].lower() == "none"
               else "the weights file changed, or another version of them was found")
        raise CheckpointError(f"{where}: its frozen {frozen['model']} prefix (weights={frozen['weights']}) is not the "
                              f"one it was trained with (content hash {got}, expected {frozen['hash']}): {why}")


def load_weights(model, weights, frozen=None):
    """Load a checkpoint's weights into `model`: all of them, or (when `frozen` identifies the prefix) all but the
    prefix's, whose weights the model already holds. Strict either way: a missing or extra key raises."""
    if frozen is None:
        model.load_state_dict(weights)
        return model
    extra = sorted(k for k in weights if not k.startswith("tail."))
    if extra:
        raise RuntimeError(f"unexpected keys {extra[:5]}")
    model.tail.load_state_dict({k.removeprefix("tail."): v for k, v in weights.items()})
    return model


def rebuild(config, num_classes, frozen, where):
    """The model of a checkpoint with the frozen prefix `frozen` identifies: built as Run builds it (seeded,
    pretrained weights loaded), in a forked RNG, its prefix's hash checked."""
    with torch.random.fork_rng(devices=[]):
        if config["seed"] is not None:
            torch.manual_seed(config["seed"])
        try:
            model = build_model(config, num_classes, load_weights=True)
        except UserError as err:   # the weights file or the hub cache is not there
            raise CheckpointError(f"{where}: its frozen {frozen['model']} prefix (weights={frozen['weights']}) "
                                  f"cannot be found: {err}") from None
    check_frozen(model, frozen, where)
    return model


def load(path, device="cpu"):
    """(model in eval mode, checkpoint dict): a checkpoint alone is enough to predict."""
    ckpt = read(path)
    frozen = ckpt.get("frozen")
    try:
        config = resolve(ckpt["config"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: its config is not one of this version ({err.args[0] if err.args else err})") \
            from None
    # the frozen prefix rebuilt and checked (CheckpointError), or the whole model from the checkpoint
    if frozen is not None:
        model = rebuild(config, len(ckpt["classes"]), frozen, path)
    else:
        model = build_model(config, len(ckpt["classes"]), load_weights=False)
    try:
        load_weights(model, ckpt["model"], frozen)
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        lines = [line.strip() for line in str(err.args[0] if err.args else err).splitlines() if line.strip()]
        raise CheckpointError(f"{path}: its weights do not fit its config and {len(ckpt['classes'])} classes "
                              f"({lines[-1][:200] if lines else type(err).__name__})") from None
    return model.to(device).eval(), ckpt


def resume_problem(ckpt, config, classes, root):
    """None, or why a run of `config` on `classes` read from `root` cannot continue checkpoint `ckpt`: one line
    naming each difference with both values, what may change (resume_may_change in dogs.config), and how to
    continue it."""
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
               for key, spec in SCHEMA.items() if not spec.resume_may_change and saved[key] != config[key]}
    if config["epochs"] < ckpt["epoch"]:
        changed["epochs"] = f"epochs (checkpoint: {ckpt['epoch']} trained, now: {config['epochs']})"
    elif config["schedule"] != "constant" and saved["epochs"] != config["epochs"]:
        changed["epochs"] = (f"epochs (checkpoint: {saved['epochs']}, now: {config['epochs']}; "
                             f"the {config['schedule']} schedule spans them)")
    diffs += changed.values()
    if not diffs:
        return None
    # epochs is checked above; data is compared as the folder and its classes
    may = ", ".join(["epochs (schedule constant)"] + [key for key in keys_where(resume_may_change=True)
                                                      if key not in ("epochs", "data")])
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
