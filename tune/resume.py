"""--resume: the experiment to continue, and what the command line says differently from its saved space (refused:
another space or data set would silently be ignored)."""
from pathlib import Path

from dogs.config import load_yaml, parse_sets
from dogs.data import resolve_root
from dogs.errors import ExperimentError, UserError
from tune import experiment, spaces, storage, study
from tune.cli import NO_BUDGET, SMOKE_CONFIG, SMOKE_SETTINGS, settings_from_args
from tune.experiment import saved_space
from tune.settings import SETTINGS


def resumed_experiment(args, runs):
    """(experiment folder, its saved space) to continue: --name in --storage, else the latest one (the rule every
    command names an experiment by: tune.experiment.locate)."""
    try:
        exp_dir = experiment.locate(args.name, runs, flag="--name", here=False)
        experiment.check(exp_dir)
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
