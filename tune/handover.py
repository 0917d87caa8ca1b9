"""What tune.best, --predict, --export and tune.serve hand over: which experiment (--experiment / --storage), its best
trials with their checkpoints loaded and checked, and the data folder to predict for. Reads only files it parses."""
from pathlib import Path

from dogs import ranking
from dogs.errors import ExperimentError
from tune import experiment, storage
from tune.experiment import SPACE_FILE


def experiment_dir(given, runs):
    """--experiment as its name in --storage (as tune.search's --name), else as a folder or URI; without it, the
    latest experiment in --storage. A name that is both an experiment in --storage and a folder here is refused."""
    if not given:
        return experiment.latest_experiment(runs)
    if storage.is_uri(given):
        return given
    here = Path(given).resolve()
    if not experiment.name_problem(given):   # a plain name: the storage's first
        named = storage.join(storage.resolve(runs), given)
        if storage.is_file(storage.join(named, SPACE_FILE)):
            if here.exists() and (storage.is_uri(named) or here != Path(named)):
                raise ExperimentError(f"--experiment {given} names both {named} (in --storage) and the folder {here} "
                                      f"(here); say which: --experiment {named} or --experiment ./{given}")
            return named
    if here.exists():
        return str(here)
    raise ExperimentError(f"--experiment {given}: no such folder here, and no experiment "
                          f"{storage.join(storage.resolve(runs), given)} in --storage")


def best_trials(exp_dir, space, count):
    """The `count` best trials whose best checkpoint loads, best first: [(trial, location, (model, ckpt))].

    Ranked by the search's metric and mode (dogs.ranking; of equal scores the first by trial id).
    A checkpoint that cannot be read (empty, cut) makes its trial unusable, named in one warning, and the next
    one is taken; a checkpoint that is not its trial's (check_checkpoint) is refused: the folder was tampered with.
    """
    from dogs import checkpoint as dogs_checkpoint
    from dogs.errors import CheckpointError

    metric, mode = space["search"]["metric"], space["search"]["mode"]
    trials = sorted(experiment.read_trials(exp_dir), key=lambda t: t.trial_id)   # of equal scores the first by id
    ranked = ranking.ranked(trials, lambda t: experiment.score(t, metric, mode)[0], mode)
    loaded, unreadable = [], []
    for trial in ranked:
        location = experiment.best_checkpoint(trial, metric, mode)
        if len(loaded) == count:
            break
        if location is None:
            continue
        try:
            with storage.local_dir(location, dogs_checkpoint.FILENAME) as local:   # a remote one: a temporary copy
                pair = dogs_checkpoint.load(local)
        except CheckpointError as err:
            unreadable.append(f"trial {trial.trial_id}: {err}")
            continue
        experiment.check_checkpoint(trial, location, pair[1], metric, mode)
        loaded.append((trial, location, pair))
    if not loaded and ranked:
        raise ExperimentError(f"{exp_dir}: no trial kept a checkpoint that can be loaded"
                              + (f": {'; '.join(unreadable)}" if unreadable else ""))
    if not loaded:
        diverged = any(r.get(metric) is not None for t in trials for r in t.results)
        raise ExperimentError(f"{exp_dir}: no trial has reported a finite {metric}"
                              + (": every value is NaN or Infinity (the trials diverged)" if diverged else " yet"))
    experiment.warn_once(f"Warning: {len(unreadable)} trial(s) left out, their best checkpoint cannot be loaded: "
                         f"{'; '.join(unreadable)}" if unreadable else None)
    if len(loaded) < count:
        raise ExperimentError(f"{exp_dir}: --ensemble {count}, but only {len(loaded)} trial(s) kept a checkpoint")
    return loaded


def refuse_link(path, why):
    """A folder of the experiment that is a link: a planted one would have us write (as this user) elsewhere."""
    if path.is_symlink():
        raise ExperimentError(f"{path} is a link (to {path.resolve()}): {why}")


def check_data(folder, moved=False):
    """The data folder to predict for, checked; the demo (None) is built where it is missing."""
    from dogs.data import DataError, resolve_root

    if folder is None:
        return None
    try:
        resolve_root(folder)
    except DataError as err:
        hint = " (the experiment was made elsewhere? give --data DIR, the folder on this machine)" if moved else ""
        raise DataError(f"{'' if moved else '--data: '}{err}{hint}") from None
    return str(Path(folder).expanduser().resolve())
