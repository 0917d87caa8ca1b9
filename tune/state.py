"""--resume of an experiment whose Ray state is cut or missing: found before Ray reads it, then the run is rebuilt
from the trial folders (as tune.experiment reads them) and the study.

Ray writes experiment_state-*.json in place (not through a temporary file): a full disk or a kill during that
write leaves it cut, and Ray's restore then logs a traceback and starts the experiment over (a trial beyond
`samples`, the unfinished ones never finished). Here its newest state files are parsed as JSON only (nothing in
them is unpickled) before Ray restores; when one is cut or missing:

    finished trials  (TERMINATED in their result.json) are kept as they are;
    unfinished ones  (interrupted, or errored) run again from their first epoch, with the same configuration, as new
                     trials of the same study (Optuna's enqueue_trial); their old folders stay, marked abandoned
                     (the study's user attribute): never ranked, never resumed;
    the rest         new trials asked of the study, up to `samples` (or --samples N) in all.

Unfinished trials start over rather than continue from their checkpoints: the epochs they had run are in their
old folder, and a continuation in a new folder would rank the trial on part of its history (Ray's checkpoint
numbering inside a trial folder is in the cut state). Each epoch is seeded, so the rerun computes the same.
"""
import json
import sys
from pathlib import Path

from optuna.trial import TrialState

from dogs.errors import ExperimentError
from tune import storage
from tune.experiment import read_trials
from tune.study import (ABANDONED, STUDY_FILE, abandoned_trial_ids, load_existing, read_state, sqlite_url,
                        trial_numbers)

# Ray's own state files that Tuner.restore reads: the tuner and the search generator (pickles: checked for their
# last byte, pickle's STOP, never unpickled here), the experiment state (JSON, parsed); the newest of each (by name)
EXPERIMENT_STATE = "experiment_state-*.json"
PICKLES = ("tuner.pkl", "search_gen_state-*.json")
STOP = b"."


def problem(exp_dir):
    """Why Ray cannot restore the experiment from its saved state (missing, empty, cut: one phrase), or None."""
    with storage.local_dir(exp_dir, "*") as local:
        newest = {pattern: max(Path(local).glob(pattern), default=None) for pattern in (EXPERIMENT_STATE, *PICKLES)}
        if newest[EXPERIMENT_STATE] is None:
            return f"Ray saved no {EXPERIMENT_STATE} (stopped before its first save?)"
        for pattern in (EXPERIMENT_STATE, *PICKLES):
            path = newest[pattern]
            if path is None:
                return f"Ray's {pattern} is missing"
            data = path.read_bytes()
            if pattern in PICKLES:
                whole = data.endswith(STOP)
            else:
                try:
                    whole = isinstance(json.loads(data), dict)   # parsed only: the pickled values inside stay text
                except ValueError:
                    whole = False
            if not whole:
                return (f"Ray's {path.name} is {f'cut ({len(data)} bytes)' if data.strip() else 'empty'} (a full disk "
                        "or a kill during Ray's write)")
    return None


def study_place(exp_dir):
    """(the --optuna-storage an experiment to rebuild was searched with, None for its own study.db; its study's
    name), from its searcher state, else from the study.db in its folder; ExperimentError when neither says."""
    try:
        state = read_state(exp_dir)
    except ExperimentError:   # no searcher state either: only a study.db in the folder says where it is
        state = {"in_experiment": True, "study_name": storage.name(exp_dir)}
    if not state["in_experiment"]:
        return state["study_url"], state["study_name"]
    if storage.is_uri(exp_dir):
        raise ExperimentError(f"{exp_dir} is in a bucket: copy it to a local folder (with its {STUDY_FILE}) and "
                              "--resume it there")
    if not Path(exp_dir, STUDY_FILE).is_file():
        raise ExperimentError(f"{exp_dir} has neither Ray's saved state nor its study ({STUDY_FILE}): nothing of it "
                              "can be continued; start a new search with another --name (its space: "
                              f"{storage.join(exp_dir, 'search_space.yaml')})")
    return None, state["study_name"]


def rebuild(exp_dir, space, why):
    """Settle the study for a run rebuilt from the trial folders (see the module docstring) and say so in one line;
    returns (trials to run: enqueued reruns first, then new asks; trial folders there are now; its
    --optuna-storage)."""
    samples = space["search"]["samples"]
    trials = read_trials(exp_dir)
    searched, name = study_place(exp_dir)
    rdb, study = load_existing(searched or sqlite_url(Path(exp_dir, STUDY_FILE)), name, exp_dir)
    try:
        abandoned, numbers = abandoned_trial_ids(study), trial_numbers(study)
        live = [t for t in trials if t.trial_id not in abandoned and not t.damaged]
        finished = [t for t in live if t.status == "TERMINATED"]
        rerun = sorted((t for t in live if t.status != "TERMINATED" and t.trial_id in numbers),
                       key=lambda t: numbers[t.trial_id])
        need = max(0, samples - len(finished))
        # the study trials a gone driver left RUNNING end FAIL: they never run on (their reruns are new trials)
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        for trial in rerun[:need]:
            old = by_number[numbers[trial.trial_id]]
            study.enqueue_trial(old.params, user_attrs={"retry_of": old.number})
        gone = {t.trial_id for t in live if t.status != "TERMINATED"}   # their folders: never ranked or resumed
        if gone:
            study.set_user_attr(ABANDONED, sorted(set(study.user_attrs.get(ABANDONED, [])) | gone))
    finally:
        rdb.remove_session()
        rdb.engine.dispose()
    print(f"Warning: {why}: rebuilding the run from the trial folders: {len(finished)} finished trial(s) kept, "
          f"{min(len(rerun), need)} unfinished run again from their first epoch, "
          f"{max(0, need - len(rerun))} new; {samples} in all", file=sys.stderr)
    return need, len(trials), searched
