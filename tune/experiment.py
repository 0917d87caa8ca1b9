"""Reading an experiment folder of dogs-search: its trials, their per-epoch results, the best trial and its
best checkpoint, and the space it searched. Used by the search's summary and trials.csv and by tune.best.

Only files this module parses itself are read: search_space.yaml (safe YAML), each trial's params.json and
result.json (JSON lines, one per epoch), the presence of its error.txt and checkpoint_* folders; checkpoints
are loaded by dogs.checkpoint with weights_only=True. Ray's own state (experiment_state-*.json,
tuner.pkl, searcher-state-*.pkl, params.pkl) holds pickled objects and is never read here: an experiment
from someone else's bucket cannot run code through it.

"Best" has one meaning (dogs.config metric/mode): a trial's score is best_<metric>, the best value of the
metric over its epochs; its best checkpoint is that epoch's, which tune.retention keeps.
"""
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.fs

from dogs import ranking, uncertainty
from dogs.config import METRICS, SCHEMA, value_type
from dogs.errors import USER_ERROR_KEY, ExperimentError, UserError
from tune import spaces, storage

DEFAULT_STORAGE = "runs"
SPACE_FILE = "search_space.yaml"
# an experiment's name is its folder in --storage, a URI's last part and the Optuna study's name: letters, digits
# and . _ - only (no /, %, #, space, ..: nothing a path or a SQLite URL reads as more than a name)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 100
NAME_RULE = f"1 to {MAX_NAME} characters: ASCII letters, digits, '.', '_', '-', starting with a letter or digit"


@dataclass
class Trial:
    """One trial as its folder holds it."""
    trial_id: str
    path: str                                         # folder or URI
    config: dict                                      # params.json
    results: list = field(default_factory=list)      # one dict per epoch, by epoch (a rerun epoch: its last run)
    errored: bool = False                             # error.txt: it raised at least once
    checkpoints: set = field(default_factory=set)    # names of the checkpoint_* folders Ray kept
    damaged: str = ""                                 # why its params.json or result.json cannot be read: unusable

    @property
    def last(self):
        return self.results[-1] if self.results else {}

    @property
    def status(self):
        """TERMINATED (ran its epochs or ASHA stopped it), ERROR, UNFINISHED (running, pending, interrupted), or
        DAMAGED (a file of it cannot be read: it is never ranked)."""
        if self.damaged:
            return "DAMAGED"
        if self.last.get(USER_ERROR_KEY):   # failed before its first epoch, in one line (dogs.trial): not retried
            return "ERROR"
        if self.last.get("done") or (self.results and self.last.get("epoch", 0) >= self.config.get("epochs", 1e9)):
            return "TERMINATED"
        return "ERROR" if self.errored else "UNFINISHED"


def name_problem(name):
    """Why `name` cannot name an experiment (what is wrong, what is allowed), or None."""
    if not NAME.fullmatch(name) or len(name) > MAX_NAME:
        shown = repr(name) if len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"
        return f"{shown} is not an experiment name; allowed: {NAME_RULE}"
    return None


def default_name(stem, stamp):
    """<space file's name>-<date>-<time>, any character a name cannot hold replaced by '-'."""
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', stem).lstrip('.-_')[:MAX_NAME - 20] or 'search'}-{stamp}"


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


def read_json(fs, path, shown):
    """A JSON object file (params.json); anything else (empty, cut, not an object) is an ExperimentError naming it."""
    text = read_text(fs, path)
    if not text.strip():
        raise ExperimentError(f"{shown} is empty (its write was cut: a full disk, a killed process?)")
    try:
        value = json.loads(text)
    except ValueError as err:
        raise ExperimentError(f"{shown} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ExperimentError(f"{shown} is not a JSON object")
    return value


def read_results(fs, path, trial_dir):
    """The result dicts of a result.json (one JSON line per epoch). A last line without its newline that does
    not parse is an epoch still being written (the search runs, or the copy was cut there): not reported
    yet. Any other line that is not a JSON object is an ExperimentError naming it (the trial is damaged)."""
    text = read_text(fs, path)
    lines = text.split("\n")
    results = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            result = json.loads(line)
        except ValueError as err:
            if number == len(lines):   # no newline after it: still being written
                break
            raise ExperimentError(f"{trial_dir}/result.json line {number} is not valid JSON ({err})") from None
        epoch = result.get("epoch", result.get("training_iteration")) if isinstance(result, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ExperimentError(f"{trial_dir}/result.json line {number} is not a result of an epoch (a JSON "
                                  "object with an integer epoch)")
        results.append(result)
    return results


def read_trials(exp_dir):
    """Every trial of the experiment (a folder with params.json, or error.txt only), from its own files.

    A trial whose params.json or result.json cannot be read (empty after a full disk, cut, edited) is DAMAGED:
    kept with no config and no results, so it is never ranked, and named in one warning; the other trials stay
    usable."""
    fs, root = storage.filesystem(exp_dir)
    folders = [info for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
               if info.type == pyarrow.fs.FileType.Directory]
    trials, damaged = [], []
    for folder in sorted(folders, key=lambda info: info.base_name):
        names = {info.base_name: info.type for info in fs.get_file_info(pyarrow.fs.FileSelector(folder.path))}
        if names.get("params.json") != pyarrow.fs.FileType.File and "error.txt" not in names:
            continue   # not a trial (a trial that failed to start has only error.txt)
        path = storage.join(exp_dir, folder.base_name)
        try:
            trials.append(read_trial(fs, folder, names, path))
        except ExperimentError as err:
            damaged.append(str(err))
            trials.append(Trial(trial_id=folder.base_name.removeprefix("trial_"), path=path, config={},
                                errored="error.txt" in names, damaged=damaged[-1]))
    warn_once(f"Warning: {len(damaged)} trial(s) cannot be read and are left out of the ranking: "
              f"{'; '.join(damaged)}" if damaged else None)
    return trials


def read_trial(fs, folder, names, path):
    """One trial from its folder's files (`names`: its entries); ExperimentError when one cannot be read."""
    # every epoch reported; an epoch run twice (resumed after Ctrl-C) counts once, its later run
    by_epoch = {}
    if names.get("result.json") == pyarrow.fs.FileType.File:
        for result in read_results(fs, f"{folder.path}/result.json", path):
            by_epoch[result.get("epoch", result.get("training_iteration"))] = result
    results = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    trial_id = results[-1].get("trial_id") if results else None
    has_params = names.get("params.json") == pyarrow.fs.FileType.File
    return Trial(
        trial_id=str(trial_id or folder.base_name.removeprefix("trial_")), path=path,
        config=read_json(fs, f"{folder.path}/params.json", storage.join(path, "params.json")) if has_params else {},
        results=results, errored="error.txt" in names,
        checkpoints={name for name, kind in names.items()
                     if name.startswith("checkpoint_") and kind == pyarrow.fs.FileType.Directory})


_WARNED = set()   # warnings this process printed already (the trials are read several times per command)


def warn_once(message):
    """Print a warning line on stderr, once per process; None prints nothing."""
    if message and message not in _WARNED:
        _WARNED.add(message)
        print(message, file=sys.stderr)


def score(trial, metric, mode):
    """(best_<metric>, epoch it was reached at) of a trial, over the epochs it ran; (None, None) before any
    epoch with a finite value (a trial that diverged from its first epoch has no score: it never wins).

    The later of equal epochs, as the trainable and Ray's checkpoint keeping do (dogs.ranking).
    """
    best = best_result(trial, metric, mode)
    return (None, None) if best is None else (best[metric], best.get("epoch"))


def best_result(trial, metric, mode):
    """The result (epoch) that is the trial's score (see score), or None."""
    return ranking.best(trial.results, lambda r: r.get(metric), mode, ties="last")


def score_interval(trial, metric, mode):
    """The 95% interval (low, high) of the trial's score (dogs.uncertainty), or None (a loss, no score)."""
    best = best_result(trial, metric, mode)
    return None if best is None else uncertainty.interval(metric, best[metric], best)


def best_trial(trials, metric, mode):
    """The trial with the best best_<metric> of all that reported one (finished or not); None if none did.
    Of equal ones the first by trial id, as the summary, trials.csv's order and the progress line."""
    return ranking.best(sorted(trials, key=lambda t: t.trial_id), lambda t: score(t, metric, mode)[0], mode)


def best_checkpoint(trial, metric, mode):
    """Location of the trial's best kept checkpoint folder (by metric and mode; one of an epoch with a finite
    metric), or None if it kept none."""
    result = best_checkpoint_result(trial, metric, mode)
    return None if result is None else storage.join(trial.path, result["checkpoint_dir_name"])


def best_checkpoint_result(trial, metric, mode):
    """The result (epoch) of the trial's best kept checkpoint folder, or None."""
    kept = [r for r in trial.results if r.get("checkpoint_dir_name") in trial.checkpoints]
    return ranking.best(kept, lambda r: r.get(metric), mode, ties="last")


def check_checkpoint(trial, location, ckpt, metric, mode):
    """Refuse a checkpoint that is not the one the trial's own files say it is: its epoch and metric must be
    those result.json reports for that folder, its config the trial's params.json (a checkpoint folder copied
    from another trial, run or data set would predict with another model than the one ranked)."""
    from dogs.config import resolve

    result = best_checkpoint_result(trial, metric, mode)
    problems = []
    if ckpt["epoch"] != result.get("epoch") or ckpt["metrics"].get(metric) != result.get(metric):
        problems.append(f"it is of epoch {ckpt['epoch']} with {metric}={ckpt['metrics'].get(metric)}, but "
                        f"result.json reports epoch {result.get('epoch')} with {metric}={result.get(metric)} for it")
    try:
        params = resolve(trial.config)
    except UserError as err:
        raise ExperimentError(f"{trial.path}/params.json: {err}") from None
    differ = [f"{name} (checkpoint: {ckpt['config'].get(name)!r}, params.json: {params[name]!r})"
              for name in sorted(trial.config) if ckpt["config"].get(name) != params[name]]
    if differ:
        problems.append(f"its config differs from the trial's params.json: {'; '.join(differ)}")
    if problems:
        raise ExperimentError(f"{location} is not the checkpoint of trial {trial.trial_id}: {'. '.join(problems)}; "
                              "the experiment folder was changed or mixed with another one")


def trials_table(exp_dir, space, trials=None):
    """One row per trial: status, stopped early, epochs, last epoch's scores, best_<metric> and its epoch,
    time, searched parameters, best checkpoint, folder."""
    s = space["search"]
    metric, mode = s["metric"], s["mode"]
    rows = []
    for trial in read_trials(exp_dir) if trials is None else trials:
        last, status = trial.last, trial.status
        best, best_epoch = score(trial, metric, mode)
        bounds = score_interval(trial, metric, mode) or (None, None)
        checkpoint = best_checkpoint(trial, metric, mode)
        rows.append({
            "trial_id": trial.trial_id,
            "status": status,
            "stopped_early": status == "TERMINATED" and len(trial.results) < s["epochs"],
            "epochs": 0 if last.get(USER_ERROR_KEY) else len(trial.results),
            **{name: last.get(name) for name in METRICS},   # scores of the last epoch run
            f"best_{metric}": best,
            **dict(zip(interval_columns(metric), bounds)),
            "best_epoch": best_epoch,
            "time_s": last.get("time_total_s"),
            **{name: trial.config.get(name) for name in spaces.searched_names(space)},
            "checkpoint": printable(checkpoint),
            "path": printable(trial.path),
        })
    table = pd.DataFrame(rows, columns=None if rows else ["trial_id", "status", "stopped_early", "epochs",
                                                          *METRICS, f"best_{metric}", *interval_columns(metric),
                                                          "best_epoch", "time_s"])
    for name in spaces.searched_names(space):   # an integer key stays one where some trials lack it (not 0.0)
        if name in table and name in SCHEMA and value_type(SCHEMA[name]) is int:
            table[name] = table[name].astype("Int64")
    return table


def interval_columns(metric):
    """trials.csv's columns for the 95% interval of each trial's score: none for a loss."""
    return [f"best_{metric}_low", f"best_{metric}_high"] if uncertainty.has_interval(metric) else []


def printable(location):
    """A location as a user writes it: a URI without its query (endpoint options), a local path as it is."""
    if location is None or not storage.is_uri(location):
        return location
    fs, path = storage.filesystem(location)
    return storage.as_uri(fs, path)


def interval_line(table, best, metric):
    """The summary's line on how sure the best score is: its 95% interval, and how many other trials' scores lie
    within it (a tie on this validation set); for a loss, that it has none."""
    low, high = (best.get(f"best_{metric}_low"), best.get(f"best_{metric}_high"))
    if not uncertainty.has_interval(metric):
        return f"  interval     none for a loss ({metric}): only accuracies and macro-F1 get a 95% interval"
    if low is None or pd.isna(low):
        return "  interval     none: the trials reported no validation set size (made before intervals were)"
    others = table[(table.trial_id != best.trial_id) & table[f"best_{metric}"].notna()][f"best_{metric}"]
    inside = uncertainty.within(others, (low, high))
    how = "bootstrap of its validation predictions" if metric in uncertainty.BOOTSTRAPPED else "Wilson"
    return (f"  interval     95% [{low:.4f}, {high:.4f}] ({how}); {inside} other trial(s) within it"
            + (": a tie on this validation set (tune.best --retrain --top K --seeds N re-evaluates them)"
               if inside else ""))
