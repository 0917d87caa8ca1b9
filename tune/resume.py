"""--resume: the experiment to continue, and what the command line says differently from its saved space (refused:
another space or data set would silently be ignored).

--resume of an experiment whose Ray state is cut or missing: found before Ray reads it, then the run is rebuilt
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

from dogs.config import load_yaml, parse_sets
from dogs.data import resolve_root
from dogs.errors import ExperimentError, UserError
from tune import experiment, spaces, storage, study
from tune.experiment import read_trials, saved_space
from tune.settings import SETTINGS
from tune.spaces import NO_BUDGET, SMOKE_CONFIG, SMOKE_SETTINGS, settings_from_args
from tune.study import ABANDONED, STUDY_FILE, abandoned_trial_ids, load_existing, read_state, sqlite_url, trial_numbers


def resumed_experiment(args, runs):
    """(experiment folder, its saved space) to continue: --name in --storage, else the latest one (the rule every
    command names an experiment by: tune.experiment.locate)."""
    try:
        exp_dir = experiment.locate(args.name, runs, flag="--name", here=False)
        experiment.check_folder(exp_dir)
    except ExperimentError as err:
        raise UserError(f"--resume: {err}") from None
    try:
        study.read_state(exp_dir)
    except study.PickledSearcherState as err:
        raise UserError(f"--resume: {err}") from None
    except ExperimentError:   # no searcher state yet: Tune's own check below says what is missing
        pass
    else:   # its study's database answers (a server may be down): one line before Ray starts
        with study.open_study(exp_dir):
            pass
    space = saved_space(exp_dir)
    samples = extended_samples(args, space["search"]["samples"])
    try:
        differ = resume_differences(args, exp_dir, space)
    except UserError as err:
        raise UserError(f"--resume: {err}") from None
    if differ:
        raise UserError(f"--resume continues {exp_dir} as it was searched (its search_space.yaml), but the command "
                        f"line says otherwise: {'; '.join(differ)}. Drop those flags (--time-budget and a larger "
                        "--samples may change), or start a new search with another --name")
    print(f"Resuming {exp_dir} with its saved space, data and settings (--time-budget may change)")
    space["search"]["samples"] = samples
    if args.time_budget is not None:   # this session's budget (checked by the flag's type)
        space["search"]["time_budget"] = None if args.time_budget.lower() in NO_BUDGET else args.time_budget
    return exp_dir, space


def extended_samples(args, saved):
    """--resume --samples N: N trials in all (more than the saved ones: the extra ones asked of the same study);
    the saved number without --samples."""
    given = settings_from_args(args).get("samples")
    if given is None or given == saved:
        return saved
    if given < saved:
        raise UserError(f"--resume --samples {given}: the search has {saved} samples already; --samples on --resume "
                        f"extends it (more than {saved}), it never removes trials; or start a new search with "
                        "another --name")
    return given


def resume_differences(args, exp_dir, space):
    """What --space, --data, --set, --smoke-test and the search flags given with --resume say differently from
    the experiment's saved space, one "name (saved: x, now: y)" each; [] when they say the same or are not given
    (the same command again with --resume is fine; another space or data set would silently be ignored)."""
    settings = {k: v for k, v in settings_from_args(args).items() if v is not None and k != "time_budget"}
    may_change = {"time_budget"} | ({"samples"} if "samples" in settings else set())   # see extended_samples
    if not (args.space or args.data or args.set or args.smoke_test or settings):
        return []
    overrides = {**(SMOKE_SETTINGS if args.smoke_test else {}), **settings}
    sets = {**(SMOKE_CONFIG if args.smoke_test else {}), **parse_sets(args.set)}
    saved_params = {p["name"]: p for p in space["params"]}
    data = saved_params["data"]["args"] if "data" in saved_params else None
    if args.data:
        root, is_demo = resolve_root(args.data)
        data = None if is_demo else str(root)
    if args.space:
        given = spaces.load(spaces.find_space_file(args.space), overrides, sets, data=data)
    else:   # the saved space with the flags applied
        with storage.local_dir(exp_dir, experiment.SPACE_FILE) as local:
            raw = load_yaml(Path(local, experiment.SPACE_FILE).read_text())
        raw.pop("data", None)
        given = spaces.validate(raw, storage.join(exp_dir, experiment.SPACE_FILE), overrides, sets, data)
    differ = [f"search.{key} (saved: {space['search'][key]!r}, now: {given['search'][key]!r}"
              + (f"; {SETTINGS[key].why_fixed}" if SETTINGS[key].why_fixed else "") + ")"
              for key in space["search"] if key not in may_change and given["search"][key] != space["search"][key]]
    given_params = {p["name"]: p for p in given["params"]}
    for name in sorted(set(saved_params) | set(given_params)):
        was, now = saved_params.get(name), given_params.get(name)
        if was != now:
            differ.append(f"{'data' if name == 'data' else 'params.' + name} (saved: {shown_param(was)}, "
                          f"now: {shown_param(now)})")
    if given["first_trials"] != space["first_trials"]:
        differ.append("first_trials")
    return differ


def shown_param(entry):
    """A space entry as the user wrote it: a fixed value, or {kind: args}; 'absent' when not in the space."""
    if entry is None:
        return "absent"
    return repr(entry["args"]) if entry["kind"] == "fixed" else f"{{{entry['kind']}: {entry['args']!r}}}"


# Ray's own state files that Tuner.restore reads: the tuner and the search generator (pickles: checked for their
# last byte, pickle's STOP, never unpickled here), the experiment state (JSON, parsed); the newest of each (by name)
EXPERIMENT_STATE = "experiment_state-*.json"
PICKLES = ("tuner.pkl", "search_gen_state-*.json")
STOP = b"."


def state_problem(exp_dir):
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


def rebuild_from_trials(exp_dir, space, why):
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
