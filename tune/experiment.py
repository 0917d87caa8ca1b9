"""An experiment folder of dogs-search: which one a command means (locate), and `Experiment`, the one home of it:
its space, metric and mode, its trials and their per-epoch results, the ranking, the best trials with their checked
checkpoints, trials.csv's table. Used by the search's summary and trials.csv, tune.best and tune.serve.

Only files this module parses itself are read: search_space.yaml (safe YAML), each trial's params.json and
result.json (JSON lines, one per epoch), the presence of its error.txt and checkpoint_* folders; checkpoints
are loaded by dogs.checkpoint with weights_only=True. Ray's own state (experiment_state-*.json,
tuner.pkl, searcher-state-*.pkl, params.pkl) holds pickled objects and is never read here: an experiment
from someone else's bucket cannot run code through it.

"Best" has one meaning (dogs.config metric/mode): a trial's score is best_<metric>, the best value of the
metric over its epochs; its best checkpoint is that epoch's, which tune.callbacks keeps.

The one naming rule of trials and re-evaluation runs: every place that shows a trial asks these functions.

    #3 ef4ab16e     a search's trial: its Optuna trial number and its Tune id (the id alone when the study does
                    not know it: a trial of an experiment whose study cannot be read)
    rank1-seed2     a re-evaluation run (tune.best --retrain --top K --seeds N): its configuration's rank in the
                    search (1 = the best) and its seed

The console, tune.best, trials.csv (its `trial` column), the summary, TensorBoard's runs, MLflow's runs and the
plots all show these. Folders keep their own names (trial_<id>, <id>-seed<N>): an experiment made before
these names resumes and hands over as it did.
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
from tune.storage import DEFAULT_STORAGE


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
        if self.last.get(USER_ERROR_KEY):   # failed before its first epoch, in one line (dogs.ray_trainable): not retried
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
    runs = storage.absolute(runs)
    candidates = storage.subfolders_with(runs, SPACE_FILE)
    if not candidates:
        raise ExperimentError(f"no experiment in {runs} (looked for */{SPACE_FILE})")
    return storage.join(runs, max(candidates, key=candidates.get))


def check_folder(exp_dir):
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
    kept with no config and no results, so it is never ranked (damaged_warning names them); the other trials stay
    usable."""
    fs, root = storage.filesystem(exp_dir)
    folders = [info for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
               if info.type == pyarrow.fs.FileType.Directory]
    trials = []
    for folder in sorted(folders, key=lambda info: info.base_name):
        names = {info.base_name: info.type for info in fs.get_file_info(pyarrow.fs.FileSelector(folder.path))}
        if names.get("params.json") != pyarrow.fs.FileType.File and "error.txt" not in names:
            continue   # not a trial (a trial that failed to start has only error.txt)
        path = storage.join(exp_dir, folder.base_name)
        try:
            trials.append(read_trial(fs, folder, names, path))
        except ExperimentError as err:
            trials.append(Trial(trial_id=folder.base_name.removeprefix("trial_"), path=path, config={},
                                errored="error.txt" in names, damaged=str(err)))
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


def holdout_key(metric):
    """The result key of `metric` on the held-out part of Validation (search.holdout): holdout_acc for val_acc."""
    return f"holdout_{metric.removeprefix('val_')}"


def damaged_warning(trials):
    """The one warning line on the trials that cannot be read (left out of the ranking), or None."""
    damaged = [t.damaged for t in trials if t.damaged]
    return (f"Warning: {len(damaged)} trial(s) cannot be read and are left out of the ranking: {'; '.join(damaged)}"
            if damaged else None)


def locate(given, runs, flag="--experiment", here=True):
    """The one rule for which experiment a command means (tune.best and tune.serve --experiment, tune.search --resume
    --name): none given, the latest one in `runs` (--storage); a URI as it is; a plain name, the experiment of that
    name in `runs` (as tune.search's --name), else (`here`) a folder here, and a name that is both is refused.
    tune.search --resume passes here=False: its --name is a name in --storage only."""
    if not given:
        return latest_experiment(runs)
    if storage.is_uri(given):
        return given
    local = Path(given).resolve()
    named = storage.join(storage.absolute(runs), given)
    if not name_problem(given):   # a plain name: the storage's first
        if storage.is_file(storage.join(named, SPACE_FILE)):
            if here and local.exists() and (storage.is_uri(named) or local != Path(named)):
                raise ExperimentError(f"{flag} {given} names both {named} (in --storage) and the folder {local} "
                                      f"(here); say which: {flag} {named} or {flag} ./{given}")
            return named
        if not here:
            return named   # check_folder() says it is not an experiment
    if here and local.exists():
        return str(local)
    raise ExperimentError(f"{flag} {given}: no such folder here, and no experiment {named} in --storage")


class Experiment:
    """An experiment of dogs-search as its folder (or URI) holds it: its space, the metric and mode that rank its
    trials (bound once), its trials (read once, on first use), and the questions every command asks of it.

    "Best" has one meaning: a trial's score is best_<metric> over its epochs (dogs.ranking: NaN never best, of equal
    epochs the later); of equal scores the first trial by id. A re-evaluation's runs are ranked by the same rule."""

    def __init__(self, location, space, trials=None):
        self.location, self.space = location, space
        self.search = space["search"]
        self.metric, self.mode = self.search["metric"], self.search["mode"]
        self._trials = trials
        self._numbers = None   # {trial id: Optuna trial number}, read from the study on first use

    @classmethod
    def open(cls, given=None, runs=DEFAULT_STORAGE):
        """The experiment the user named (locate's rule), checked to be one, with its saved space."""
        location = locate(given, runs)
        check_folder(location)
        return cls(location, saved_space(location))

    @property
    def trials(self):
        """Every trial, by trial id (read once; the ones that cannot be read named in one warning)."""
        if self._trials is None:
            self._trials = sorted(read_trials(self.location), key=lambda t: t.trial_id)
            warning = damaged_warning(self._trials)
            if warning:
                print(warning, file=sys.stderr)
        return self._trials

    def name(self, trial_id):
        """A trial's one name (tune.experiment: `#3 ef4ab16e`; the id alone when the study cannot be read)."""
        if self._numbers is None:
            self._numbers = study_numbers(self.location)
        return trial_name(trial_id, self._numbers.get(trial_id))

    def baseline_warning(self, trial, data=None, name=None):
        """dogs.baseline's Validation rule for the trial's best checkpoint (its val_acc against always answering the
        largest class of Validation, by its 95% interval): the warning line, or None (above it, no val_acc or size
        reported, or Validation not readable here). `data`: the data folder on this machine (default: the
        trial's); `name`: the trial's name when the caller has it."""
        from dogs import baseline
        from dogs.data import VALIDATION, labeled_split, resolve_root

        result = self.checkpoint_result(trial) or self.best_result(trial) or {}
        try:
            folder = data if data is not None else trial.config.get("data")
            root, _ = resolve_root(folder, trial.config.get("cache_dir"))
            classes, _, labels = labeled_split(root, VALIDATION)
        except (UserError, OSError):   # the data is elsewhere now: nothing can be said here
            return None
        return baseline.below_majority(result.get("val_acc"), result.get("val_images"), labels, classes,
                                       what=f"the best trial, {name or self.name(trial.trial_id)},",
                                       fix="tune.best --submit writes its predictions and report/; train longer "
                                           "or search again")

    # ------------------------------------------------------------------ one trial (or a re-evaluation's run)
    def best_result(self, trial):
        """The result (epoch) that is the trial's score, or None before any epoch with a finite metric."""
        return ranking.best(trial.results, lambda r: r.get(self.metric), self.mode, ties="last")

    def score(self, trial):
        """(best_<metric>, the epoch it was reached at) of a trial, (None, None) before any finite one: a trial that
        diverged from its first epoch never wins."""
        best = self.best_result(trial)
        return (None, None) if best is None else (best[self.metric], best.get("epoch"))

    def interval(self, trial):
        """The 95% interval (low, high) of the trial's score (dogs.uncertainty), or None (a loss, no score)."""
        best = self.best_result(trial)
        return None if best is None else uncertainty.interval(self.metric, best[self.metric], best)

    def checkpoint_result(self, trial):
        """The result (epoch) of the trial's best kept checkpoint folder, or None."""
        kept = [r for r in trial.results if r.get("checkpoint_dir_name") in trial.checkpoints]
        return ranking.best(kept, lambda r: r.get(self.metric), self.mode, ties="last")

    def checkpoint(self, trial):
        """Location of the trial's best kept checkpoint folder (one of an epoch with a finite metric), or None."""
        result = self.checkpoint_result(trial)
        return None if result is None else storage.join(trial.path, result["checkpoint_dir_name"])

    def check_checkpoint(self, trial, location, ckpt, config=None):
        """Refuse a checkpoint that is not the one the trial's own files say it is: its epoch and metric must be
        those result.json reports for that folder, its config the trial's params.json (or `config`, what a
        re-evaluation gave its run): a checkpoint folder copied from another trial, run or data set would predict
        with another model than the one ranked."""
        from dogs.config import resolve

        result, metric, problems = self.checkpoint_result(trial), self.metric, []
        if ckpt["epoch"] != result.get("epoch") or ckpt["metrics"].get(metric) != result.get(metric):
            problems.append(f"it is of epoch {ckpt['epoch']} with {metric}={ckpt['metrics'].get(metric)}, but "
                            f"result.json reports epoch {result.get('epoch')} with {metric}={result.get(metric)} "
                            "for it")
        if config is None:
            try:
                params = resolve(trial.config)
            except UserError as err:
                raise ExperimentError(f"{trial.path}/params.json: {err}") from None
            differ = [f"{name} (checkpoint: {ckpt['config'].get(name)!r}, params.json: {params[name]!r})"
                      for name in sorted(trial.config) if ckpt["config"].get(name) != params[name]]
        else:
            differ = [name for name, value in config.items() if ckpt["config"].get(name) != value]
        what = f"trial {trial.trial_id}" if config is None else f"run {storage.name(trial.path)}"
        if differ:
            problems.append(f"its config differs from the {'trial' if config is None else 'run'}'s "
                            f"{'params.json' if config is None else 'plan'}: {'; '.join(differ)}")
        if problems:
            raise ExperimentError(f"{location} is not the checkpoint of {what}: {'. '.join(problems)}; the experiment "
                                  "folder was changed or mixed with another one")

    def load(self, trial, location, config=None):
        """(model, ckpt) of a trial's checkpoint folder (a remote one through a temporary copy), checked."""
        from dogs import checkpoint as dogs_checkpoint

        with storage.local_dir(location, dogs_checkpoint.FILENAME) as local:
            pair = dogs_checkpoint.load(local)
        self.check_checkpoint(trial, location, pair[1], config)
        return pair

    def full_config(self, ckpt, data=None):
        """A trial's full config (its checkpoint's) for the search's whole epoch budget, ranked as the search ranked,
        and on `data` (a folder on this machine) when given."""
        config = {**ckpt["config"], "epochs": self.search["epochs"], "metric": self.metric, "mode": self.mode}
        return config if data is None else {**config, "data": str(data)}

    # ------------------------------------------------------------------ the trials, ranked
    def best_trial(self, trials=None):
        """The trial with the best score of all that reported one (finished or not; of equal ones the first by id),
        or None: the summary's, trials.csv's order and the progress line's best."""
        trials = self.trials if trials is None else trials
        return ranking.best(sorted(trials, key=lambda t: t.trial_id), lambda t: self.score(t)[0], self.mode)

    def ranked(self, distinct=False, trials=None):
        """[(trial, its best checkpoint's location)] of the trials that kept one, best first; `distinct`: only the
        best of each configuration (the seed aside)."""
        trials = sorted(self.trials if trials is None else trials, key=lambda t: t.trial_id)
        out, seen = [], set()
        for trial in ranking.ranked(trials, lambda t: self.score(t)[0], self.mode):
            location = self.checkpoint(trial)
            config = json.dumps({k: v for k, v in trial.config.items() if k != "seed"}, sort_keys=True, default=str)
            if location is not None and not (distinct and config in seen):
                seen.add(config)
                out.append((trial, location))
        return out

    def best(self, count=1):
        """The `count` best trials whose best checkpoint loads, best first: [(trial, location, (model, ckpt))].

        A checkpoint that cannot be read (empty, cut) makes its trial unusable, named in one warning, and the next
        one is taken; a checkpoint that is not its trial's (check_checkpoint) is refused: the folder was tampered with.
        """
        from dogs.errors import CheckpointError

        loaded, unreadable = [], []
        for trial, location in self.ranked():
            if len(loaded) == count:
                break
            try:
                loaded.append((trial, location, self.load(trial, location)))
            except CheckpointError as err:
                unreadable.append(f"trial {trial.trial_id}: {err}")
        if not loaded and any(ranking.finite(self.score(t)[0]) for t in self.trials):
            raise ExperimentError(f"{self.location}: no trial kept a checkpoint that can be loaded"
                                  + (f": {'; '.join(unreadable)}" if unreadable else ""))
        if not loaded:
            diverged = any(r.get(self.metric) is not None for t in self.trials for r in t.results)
            raise ExperimentError(f"{self.location}: no trial has reported a finite {self.metric}"
                                  + (": every value is NaN or Infinity (the trials diverged)" if diverged else " yet"))
        if unreadable:
            print(f"Warning: {len(unreadable)} trial(s) left out, their best checkpoint cannot be loaded: "
                  f"{'; '.join(unreadable)}", file=sys.stderr)
        if len(loaded) < count:
            raise ExperimentError(f"{self.location}: --ensemble {count}, but only {len(loaded)} trial(s) kept a "
                                  "checkpoint")
        return loaded

    def table(self, trials=None):
        """trials.csv: one row per trial: status, stopped early, epochs, last epoch's scores, best_<metric>, its
        interval and epoch, time, searched parameters, best checkpoint, folder."""
        metric, searched = self.metric, spaces.searched_names(self.space)
        rows = []
        for trial in self.trials if trials is None else trials:
            last, status = trial.last, trial.status
            best, best_epoch = self.score(trial)
            rows.append({
                "trial_id": trial.trial_id,
                "status": status,
                "stopped_early": status == "TERMINATED" and len(trial.results) < self.search["epochs"],
                "epochs": 0 if last.get(USER_ERROR_KEY) else len(trial.results),
                **{name: last.get(name) for name in METRICS},   # scores of the last epoch run
                f"best_{metric}": best,
                **dict(zip(interval_columns(metric), self.interval(trial) or (None, None))),
                "best_epoch": best_epoch,
                "time_s": last.get("time_total_s"),
                **{name: trial.config.get(name) for name in searched},
                "checkpoint": printable(self.checkpoint(trial)),
                "path": printable(trial.path),
            })
        table = pd.DataFrame(rows, columns=None if rows else ["trial_id", "status", "stopped_early", "epochs",
                                                              *METRICS, f"best_{metric}", *interval_columns(metric),
                                                              "best_epoch", "time_s"])
        for name in searched:   # an integer key stays one where some trials lack it (not 0.0)
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


KNOWN = {}   # {Tune trial id: Optuna trial number} the search's searcher handed out in this process (tune.study_searcher)


def trial_name(trial_id, number=None):
    """`#3 ef4ab16e`: the Optuna trial number and the Tune id; the id alone when the number is unknown (None), the
    number alone when the id is (a study trial that never had a Tune trial)."""
    if number is None or trial_id is None:
        return f"#{number}" if trial_id is None else trial_id
    return f"#{number} {trial_id}"


def named(trial):
    """A search trial's name as Tune shows it (its trial_name_creator: MLflow's run, TensorBoard's): the number its
    study trial got in this process (KNOWN), set before Tune creates the trial."""
    return trial_name(trial.trial_id, KNOWN.get(trial.trial_id))


def run_name(rank, seed):
    """`rank1-seed2`: a re-evaluation run of the search's `rank`-th best configuration (1 = the best), `seed`."""
    return f"rank{rank}-seed{seed}"


def study_numbers(exp_dir):
    """{Tune trial id: Optuna trial number} of the experiment's study; {} when it cannot be read now (an older
    experiment's pickled study, a database that does not answer): then names are the ids alone."""
    from tune.study import open_study, trial_numbers  # here: tune.study imports Optuna

    try:
        with open_study(exp_dir) as study:
            return trial_numbers(study)
    except Exception:   # a name only: a study not readable this moment leaves the number out
        return {}
