"""Reading an experiment folder of dogs-search: its trials, their per-epoch results, the best trial and its
best checkpoint, and the space it searched. Used by the search's summary and trials.csv and by tune.best.

Only files this module parses itself are read: search_space.yaml (safe YAML), each trial's params.json and
result.json (JSON lines, one per epoch), the presence of its error.txt and checkpoint_* folders; checkpoints
are loaded by dogs.checkpoint with weights_only=True. Ray's own state (experiment_state-*.json,
tuner.pkl, searcher-state-*.pkl, params.pkl) holds pickled objects and is never read here: an experiment
from someone else's bucket cannot run code through it.

"Best" has one meaning (dogs.config metric/mode): a trial's score is best_<metric>, the best value of the
metric over its epochs; its best checkpoint is that epoch's, which tune.checkpoints keeps.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.fs

from dogs.config import METRICS
from dogs.errors import ExperimentError
from tune import spaces, storage

DEFAULT_STORAGE = "runs"
SPACE_FILE = "search_space.yaml"


@dataclass
class Trial:
    """One trial as its folder holds it."""
    trial_id: str
    path: str                                         # folder or URI
    config: dict                                      # params.json
    results: list = field(default_factory=list)      # one dict per epoch, by epoch (a rerun epoch: its last run)
    errored: bool = False                             # error.txt: it raised at least once
    checkpoints: set = field(default_factory=set)    # names of the checkpoint_* folders Ray kept

    @property
    def last(self):
        return self.results[-1] if self.results else {}

    @property
    def status(self):
        """TERMINATED (ran its epochs or ASHA stopped it), ERROR, or UNFINISHED (running, pending, interrupted)."""
        if self.last.get("done") or (self.results and self.last.get("epoch", 0) >= self.config.get("epochs", 1e9)):
            return "TERMINATED"
        return "ERROR" if self.errored else "UNFINISHED"


def latest_experiment(runs):
    """The most recently changed experiment folder in `runs` (a folder or a URI)."""
    runs = storage.resolve(runs)
    candidates = storage.subfolders_with(runs, SPACE_FILE)
    if not candidates:
        raise ExperimentError(f"no experiment in {runs} (looked for */{SPACE_FILE})")
    return storage.join(runs, max(candidates, key=candidates.get))


def check(exp_dir):
    """Refuse a folder that is not an experiment of dogs-search."""
    if not storage.is_file(storage.join(exp_dir, SPACE_FILE)):
        raise ExperimentError(f"{exp_dir}: not an experiment of dogs-search (no {SPACE_FILE} in it)")


def saved_space(exp_dir):
    """The space an experiment searched (its search_space.yaml)."""
    with storage.local_dir(exp_dir, SPACE_FILE) as local:
        return spaces.load(Path(local, SPACE_FILE))


def read_text(fs, path):
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def read_trials(exp_dir):
    """Every trial of the experiment (a folder with params.json, or error.txt only), from its own files."""
    fs, root = storage.filesystem(exp_dir)
    folders = [info for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
               if info.type == pyarrow.fs.FileType.Directory]
    trials = []
    for folder in sorted(folders, key=lambda info: info.base_name):
        names = {info.base_name: info.type for info in fs.get_file_info(pyarrow.fs.FileSelector(folder.path))}
        has_params = names.get("params.json") == pyarrow.fs.FileType.File
        if not has_params and "error.txt" not in names:   # a trial that failed to start has only error.txt
            continue
        # every epoch reported; an epoch run twice (resumed after Ctrl-C) counts once, its later run
        by_epoch = {}
        if names.get("result.json") == pyarrow.fs.FileType.File:
            for line in read_text(fs, f"{folder.path}/result.json").splitlines():
                if line.strip():
                    result = json.loads(line)
                    by_epoch[result.get("epoch", result.get("training_iteration"))] = result
        results = [by_epoch[epoch] for epoch in sorted(by_epoch)]
        trial_id = results[-1]["trial_id"] if results else folder.base_name.removeprefix("trial_")
        trials.append(Trial(
            trial_id=str(trial_id), path=storage.join(exp_dir, folder.base_name),
            config=json.loads(read_text(fs, f"{folder.path}/params.json")) if has_params else {},
            results=results, errored="error.txt" in names,
            checkpoints={name for name, kind in names.items()
                         if name.startswith("checkpoint_") and kind == pyarrow.fs.FileType.Directory}))
    return trials


def key(value, mode):
    """Sort key: larger is better; a missing or NaN score is worst."""
    if value is None or value != value:
        return float("-inf")
    return value if mode == "max" else -value


def score(trial, metric, mode):
    """(best_<metric>, epoch it was reached at) of a trial, over the epochs it ran; (None, None) before any.

    The later of equal epochs, as the trainable (dogs.engine.is_better) and Ray's checkpoint keeping do.
    """
    scored = [r for r in trial.results if r.get(metric) is not None]
    if not scored:
        return None, None
    best = max(reversed(scored), key=lambda r: key(r[metric], mode))   # reversed: max keeps the first = latest
    return best[metric], best.get("epoch")


def best_trial(trials, metric, mode):
    """The trial with the best best_<metric> of all that reported one (finished or not); None if none did."""
    scored = [t for t in trials if score(t, metric, mode)[0] is not None]
    return max(scored, key=lambda t: key(score(t, metric, mode)[0], mode)) if scored else None


def best_checkpoint(trial, metric, mode):
    """Location of the trial's best kept checkpoint folder (by metric and mode), or None if it kept none."""
    kept = [r for r in trial.results if r.get("checkpoint_dir_name") in trial.checkpoints]
    if not kept:
        return None
    best = max(reversed(kept), key=lambda r: key(r.get(metric), mode))
    return storage.join(trial.path, best["checkpoint_dir_name"])


def trials_table(exp_dir, space, trials=None):
    """One row per trial: status, stopped early, epochs, last epoch's scores, best_<metric> and its epoch,
    time, searched parameters, best checkpoint, folder."""
    s = space["search"]
    metric, mode = s["metric"], s["mode"]
    rows = []
    for trial in read_trials(exp_dir) if trials is None else trials:
        last, status = trial.last, trial.status
        best, best_epoch = score(trial, metric, mode)
        checkpoint = best_checkpoint(trial, metric, mode)
        rows.append({
            "trial_id": trial.trial_id,
            "status": status,
            "stopped_early": status == "TERMINATED" and len(trial.results) < s["epochs"],
            "epochs": len(trial.results),
            **{name: last.get(name) for name in METRICS},   # scores of the last epoch run
            f"best_{metric}": best,
            "best_epoch": best_epoch,
            "time_s": last.get("time_total_s"),
            **{name: trial.config.get(name) for name in spaces.searched_names(space)},
            "checkpoint": printable(checkpoint),
            "path": printable(trial.path),
        })
    return pd.DataFrame(rows, columns=None if rows else ["trial_id", "status", "stopped_early", "epochs",
                                                         *METRICS, f"best_{metric}", "best_epoch", "time_s"])


def printable(location):
    """A location as a user writes it: a URI without its query (endpoint options), a local path as it is."""
    if location is None or not storage.is_uri(location):
        return location
    fs, path = storage.filesystem(location)
    return storage.as_uri(fs, path)
