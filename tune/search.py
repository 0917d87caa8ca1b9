"""Hyper-parameter search: Optuna TPE proposes configs, ASHA stops the weak ones early, Ray Tune runs them.

    python -m tune.search --space resnet_unfreeze.yaml --data DIR
    python -m tune.search --space cnn_scratch.yaml --smoke-test          # tiny, on the demo data
    python -m tune.search --resume                                       # continue the latest experiment

The experiment folder (<storage>/<name>) holds every trial's results and checkpoints (best + last),
search_space.yaml (what was searched), trials.csv (all trials, one row each) and TensorBoard files
(`tensorboard --logdir <experiment>`: curves and an HParams comparison). docs/search.md has the details.
"""
import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from dogs.errors import ExperimentError, UserError
from tune import experiment, plots, spaces, storage
from tune.experiment import DEFAULT_STORAGE, saved_space

SETTING_FLAGS = ("samples", "epochs", "sampler", "scheduler", "grace_period", "reduction_factor", "metric", "mode", "seed",
                 "cpus_per_trial", "gpus_per_trial", "max_concurrent", "max_failures", "time_budget")
SMOKE_SETTINGS = {"samples": 4, "epochs": 2, "grace_period": 1}
SMOKE_CONFIG = {"image_size": 32, "weights": "none"}
SMALL_VALIDATION = 30   # images per class below which an early epoch's score ranks trials poorly (issue #9)


def get_args_parser():
    p = argparse.ArgumentParser(prog="dogs-search", description=__doc__.split("\n\n")[0])
    p.add_argument("--space", help="search-space YAML: a file name in search_spaces/ or a path")
    p.add_argument("--data", help="ImageFolder root with Train/ Validation/ [Test/]; default: the demo data set")
    p.add_argument("--samples", type=int, help="trials to run (search.samples)")
    p.add_argument("--epochs", type=int, help="epochs per trial = ASHA's max_t (search.epochs)")
    p.add_argument("--sampler", choices=spaces.SAMPLERS, help="Optuna sampler (search.sampler, default tpe)")
    p.add_argument("--scheduler", choices=spaces.SCHEDULERS,
                   help="asha: stop weak trials early; fifo: every trial runs all epochs (search.scheduler)")
    p.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial (search.grace_period)")
    p.add_argument("--reduction-factor", type=float, help="ASHA's reduction factor (search.reduction_factor)")
    p.add_argument("--metric", help=f"metric to optimise, one of {', '.join(spaces.METRICS)} (search.metric); "
                                    "a trial's score is best_<metric> over its epochs")
    p.add_argument("--mode", choices=["max", "min"], help="search.mode")
    p.add_argument("--seed", type=int, help="seed of the Optuna sampler (search.seed)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (search.cpus_per_trial)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions share a GPU (search.gpus_per_trial)")
    p.add_argument("--max-concurrent", type=int, help="most trials at once (search.max_concurrent)")
    p.add_argument("--max-failures", type=int, help="retries of an errored trial (search.max_failures)")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="stop the search cleanly after this wall time, e.g. 30m, 2h, 1h30m (search.time_budget); "
                        "--resume continues it. With --resume: this session's budget instead of the saved one "
                        "('none': no budget)")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="fix config values for every trial, e.g. --set model=cnn lr=3e-4 (repeatable; "
                        "the data folder is --data)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="folder or URI (s3://bucket/prefix) that holds experiments (default: runs/)")
    p.add_argument("--name", help="experiment name (default: <space>-<date>-<time>)")
    p.add_argument("--optuna-storage", metavar="URL",
                   help="SQLAlchemy URL of a database for the Optuna study (e.g. postgresql://host/db); default: "
                        "SQLite study.db in the experiment folder. The study is named after the experiment")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted experiment (--name, or the latest one in --storage) with its saved "
                        "space, data and settings (--space/--data/--set/search flags that say otherwise are refused; "
                        "--time-budget may change). It restores "
                        "Ray's pickled state: resume only experiments whose folder (or bucket) you trust")
    p.add_argument("--address", help="join a running Ray cluster (default: $RAY_ADDRESS, else start Ray here)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="Ray's full console output (a status table and each trial's config, every checkpoint) "
                        "instead of one progress line now and then")
    p.add_argument("--smoke-test", action="store_true",
                   help=f"tiny run: {SMOKE_SETTINGS}, config {SMOKE_CONFIG} (flags still override)")
    return p


def fail(message):
    """Exit with a message and no traceback."""
    print(f"dogs-search: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def settings_from_args(args):
    """Search settings given on the command line (None = not given)."""
    out = {key: getattr(args, key) for key in SETTING_FLAGS}
    for key in ("cpus_per_trial", "gpus_per_trial", "reduction_factor"):
        if out[key] is not None and float(out[key]).is_integer():
            out[key] = int(out[key])
    return out


def load_space(args, data_root):
    """The validated space: file, then --smoke-test sizes, then explicit flags and --set; the data is --data's."""
    from dogs.config import parse_sets

    path = spaces.find_space_file(args.space)
    overrides = dict(SMOKE_SETTINGS) if args.smoke_test else {}
    overrides.update({k: v for k, v in settings_from_args(args).items() if v is not None})
    sets = dict(SMOKE_CONFIG) if args.smoke_test else {}
    sets.update(parse_sets(args.set))
    # None: every node builds the demo data itself
    return spaces.load(path, overrides, sets, data=str(data_root) if data_root else None)


def set_auth_mode(address):
    """RAY_AUTH_MODE, explicit: Ray 2.60 turns token auth on by default, nodes joined by `ray start` don't."""
    if "RAY_AUTH_MODE" not in os.environ:
        has_token = (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                     or (Path.home() / ".ray" / "auth_token").is_file())
        # a local Ray started here listens for this machine only (no dashboard); a cluster decides itself
        os.environ["RAY_AUTH_MODE"] = "token" if address and has_token else "disabled"
    return os.environ["RAY_AUTH_MODE"]


def start_ray(address, verbose=False):
    """Start a new Ray here (dashboard off, loopback only), or join the cluster at `address`.

    Never Ray's default `ray.init()`: that joins a Ray left running on this machine by `ray start` (or, after
    one died without `ray stop`, retries its dead address for minutes); address="local" always starts a new one.
    """
    import ray

    source = "--address" if address else "RAY_ADDRESS in the environment"
    address = address or os.environ.get("RAY_ADDRESS")

    mode = set_auth_mode(address)
    def quiet_ray_train():
        """Each worker's set-up without -v: Ray Train's INFO lines (a "Checkpoint successfully created" per
        trial-epoch) stay out of the console; warnings and errors still show. Defined here so that Ray ships
        it by value: it needs nothing of this project on the node."""
        import logging

        logging.getLogger("ray.train").setLevel(logging.WARNING)

    runtime_env = None if verbose else {"worker_process_setup_hook": quiet_ray_train}
    if address:
        # said before: Ray retries an address it cannot reach for minutes, with its own lines only
        print(f"Joining the Ray cluster at {address} ({source}; without it, the search starts a Ray of its own "
              "on 127.0.0.1) ...", flush=True)
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        print(f"Joined the Ray cluster at {address} (RAY_AUTH_MODE={mode})")
    else:
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", runtime_env=runtime_env)
        print(f"Started a local Ray on 127.0.0.1 for this search only (RAY_AUTH_MODE={mode}, dashboard off; "
              "a running Ray cluster is joined only with --address)")
    return ray.cluster_resources()


def interrupted_at_start(args, runs, exp_dir):
    """The line printed when Ctrl-C stops Ray's start-up: nothing ran; how to start again."""
    if args.resume:
        again = f"continue with  python -m tune.search --resume --storage {shlex.quote(runs)} " \
                f"--name {shlex.quote(storage.name(exp_dir))}"
    else:
        again = "rerun the same command"
    return f"dogs-search: interrupted while starting Ray; nothing ran yet: {again}"


def check_resources(search, resources, autoscaling=False):
    """Refuse requests this cluster can never meet: Ray would leave those trials PENDING forever.

    A cluster we joined (`--address`) may add nodes later (the autoscaler): there it is only a warning.
    """
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    have = f"this Ray cluster has CPU={cpus:g}, GPU={gpus:g}"
    if autoscaling:
        if search["gpus_per_trial"] > gpus or search["cpus_per_trial"] > cpus:
            print(f"Warning: {have} now; trials stay PENDING until the autoscaler adds nodes that fit "
                  f"{search['cpus_per_trial']:g} CPU + {search['gpus_per_trial']:g} GPU per trial")
        return
    if search["gpus_per_trial"] > 0 and gpus == 0:
        fail(f"--gpus-per-trial {search['gpus_per_trial']:g} asks for a GPU but {have}; Ray would leave every "
             "trial PENDING forever. Use --gpus-per-trial 0, or join a cluster with GPUs (--address).")
    if search["gpus_per_trial"] > gpus:
        fail(f"--gpus-per-trial {search['gpus_per_trial']:g} is more than {have}.")
    if search["cpus_per_trial"] > cpus:
        fail(f"--cpus-per-trial {search['cpus_per_trial']:g} is more than {have}.")


def concurrency(search, resources):
    """How many trials can run at the same time: the slots. Tune is given as many (max_concurrent_trials), so it
    keeps that many trials pending, and a worker for each starts with the first trials, whatever their length."""
    slots = int(resources.get("CPU", 1) // search["cpus_per_trial"])
    if search["gpus_per_trial"] > 0:
        slots = min(slots, int(round(resources.get("GPU", 0) / search["gpus_per_trial"], 6)))
    return max(1, min(slots, search["samples"], search["max_concurrent"] or slots))


# errored trials whose cause the user can fix, found in their error.txt (Ray's traceback): a module missing on a
# node, or one of our typed errors (dogs/errors.py), whose message is the traceback's last line
MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")
USER_ERROR = re.compile(r"^dogs\.errors\.(\w+Error): (.+)$", re.MULTILINE)
INSTALL = ("install the project on every Ray node (pip install -e . in its folder, as cluster.yaml's "
           "setup_commands do; docs/cluster.md), then continue with --resume: errored trials run again")


def failure_hints(exp_dir, table):
    """One line per distinct cause of the errored trials that has a known fix, read from their error.txt: our
    typed error's one line (a config the trainable refused, ...), or a module missing on a node."""
    fs, _ = storage.filesystem(exp_dir)
    trials_of, errors_of = {}, {}
    for trial_id in table.trial_id[table.status == "ERROR"]:
        _, path = storage.filesystem(storage.join(exp_dir, f"trial_{trial_id}", "error.txt"))
        try:
            with fs.open_input_stream(path) as f:
                text = f.read().decode(errors="replace")
        except OSError:         # a trial that errored before its folder was synced
            continue
        for module in sorted({name.split(".")[0] for name in MISSING_MODULE.findall(text)}):
            trials_of.setdefault(module, []).append(trial_id)
        for kind, message in USER_ERROR.findall(text)[-1:]:
            errors_of.setdefault(f"{kind}: {message}", []).append(trial_id)
    lines = [f"  error        {len(trials)} errored trial(s) raised {error}" for error, trials in errors_of.items()]
    for module, trials in trials_of.items():
        what = "this project is missing on a Ray node" if module in ("dogs", "tune") \
            else f"the Python package {module!r} is missing on a Ray node"
        lines.append(f"  hint         {len(trials)} errored trial(s) failed with \"No module named {module!r}\": "
                     f"{what}; {INSTALL}")
    return lines


def make_trainable(search):
    from ray import tune

    from dogs import trainable

    return tune.with_resources(trainable, {"cpu": search["cpus_per_trial"], "gpu": search["gpus_per_trial"]})


def trial_dirname(trial):
    """Short trial names and folders: trial_<id> (Ray's default folder name repeats the whole config)."""
    return f"trial_{trial.trial_id}"


def make_tuner(space, runs, name, optuna_storage=None, verbose=False, slots=None):
    """Tuner: the Optuna study's searcher, ASHA (or FIFO) scheduler, bounded checkpoints, retries, TensorBoard."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tune.checkpoints import KeepBestAndLatest
    from tune.progress import ProgressCallback
    from tune.searcher import StudySearcher
    from tune.tensorboard import TensorBoardCallback

    s = space["search"]
    # one "best": TPE, ASHA and Tune rank a trial by its best epoch so far (best_<metric>, reported every epoch),
    # and Ray keeps each trial's best epoch's checkpoint (by <metric>) — what tune.best predicts from
    score = f"best_{s['metric']}"
    searcher = StudySearcher(space["params"], score, s["mode"], max_t=s["epochs"], exp_dir=storage.join(runs, name),
                             optuna_storage=optuna_storage, sampler=s["sampler"], seed=s["seed"],
                             samples=s["samples"], first_trials=space["first_trials"])
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=s["epochs"], grace_period=s["grace_period"],
                              reduction_factor=s["reduction_factor"]) if s["scheduler"] == "asha" else FIFOScheduler()
    return tune.Tuner(
        make_trainable(s),
        param_space={"epochs": s["epochs"], "metric": s["metric"], "mode": s["mode"]},
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=s["samples"], metric=score,
            mode=s["mode"], reuse_actors=True, max_concurrent_trials=s["max_concurrent"] or slots,
            trial_name_creator=trial_dirname, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=runs, verbose=1 if verbose else 0,   # 0: our progress line only
            # Ray deletes no checkpoint (num_to_keep would save the whole experiment state after every
            # checkpoint: O(N) per checkpoint); KeepBestAndLatest keeps each trial's best and latest
            checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=s["metric"],
                                                    checkpoint_score_order=s["mode"]),
            failure_config=tune.FailureConfig(max_failures=s["max_failures"]),
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback(),
                       TensorBoardCallback(space["params"], s["metric"]), KeepBestAndLatest(s["metric"], s["mode"])]
                      + ([] if verbose else [ProgressCallback(s["samples"], s["epochs"], s["metric"], s["mode"])]),
        ),
    )


@contextlib.contextmanager
def time_budget(seconds):
    """An Event set when `seconds` of wall time are used up; then the search stops as on Ctrl-C.

    Tune stops gracefully on SIGUSR1 as on SIGINT: the experiment state saved, running trials left to resume
    from their last checkpoint. (Tune's own time_budget_s marks running trials TERMINATED: --resume would
    skip them.) The signal repeats every 5 s until fit() returns, in case one came before Tune listened.
    """
    expired, done = threading.Event(), threading.Event()
    if not seconds:
        yield expired
        return
    if threading.current_thread() is not threading.main_thread():
        raise UserError("--time-budget works only when the search runs in the main thread (Tune's stop signal)")
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)   # never the default action (exit)

    def stop():
        if done.wait(seconds):
            return
        expired.set()
        while not done.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            done.wait(5)

    timer = threading.Thread(target=stop, daemon=True)
    timer.start()
    try:
        yield expired
    finally:
        done.set()
        timer.join()
        signal.signal(signal.SIGUSR1, previous)


def trials_table(exp_dir, space, trials=None):
    """One row per trial (tune.experiment reads them from the trials' own files); the folder of a trial that a
    killed driver had started and Ray's saved state never knew is ABANDONED (the study says which): --resume
    never runs it again."""
    from tune.searcher import abandoned_trial_ids, open_study

    table = experiment.trials_table(exp_dir, space, trials)
    with open_study(exp_dir) as study:
        abandoned = abandoned_trial_ids(study)
    if len(table) and abandoned:
        table.loc[table.trial_id.isin(abandoned), "status"] = "ABANDONED"
    return table


def plain(value):
    """numpy scalar -> Python value, for printing."""
    return value.item() if hasattr(value, "item") else value


def study_where(exp_dir):
    from tune import searcher

    return searcher.study_where(exp_dir)


def study_states(exp_dir, space=None):
    """{state: count} of the experiment's Optuna study, read from its database."""
    from tune.searcher import open_study

    with open_study(exp_dir) as study:
        return pd.Series([t.state.name for t in study.trials], dtype=object).value_counts().to_dict()


def observed_concurrency(trials, since=None):
    """(mean, most, seconds) of this session's trial work, from the epochs reported at or after `since` (all when
    None): a trial runs from its first such epoch's start to its last report; `seconds` is the trials' own time
    (time_this_iter_s) and the mean is that over the span from the first start to the last end."""
    spans, own = [], 0.0
    for trial in trials:
        ran = []
        for result in trial.results:
            end = result.get("reported_at", result.get("timestamp"))   # reported_at: float; Ray's timestamp: whole s
            if end is not None and result.get("time_this_iter_s") is not None and (since is None or end >= since):
                ran.append((end - result["time_this_iter_s"], end))
        if ran:
            spans.append((min(start for start, _ in ran), max(end for _, end in ran)))
            own += sum(end - start for start, end in ran)
    if not spans:
        return 0.0, 0, 0.0
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    span = max(end for _, end in spans) - min(start for start, _ in spans)
    return (own / span if span > 0 else float(len(spans))), most, own


def summary(table, space, wall_s, slots, exp_dir, pending=0, trials=(), since=None):
    """The lines printed at the end of a search; the best trial is tune.best's (tune.experiment.best_trial).
    Times and concurrency are this session's (`since`: when it started; a resumed search ran some epochs before)."""
    s = space["search"]
    mean, most, own_s = observed_concurrency(trials, since)
    metric, mode, score = s["metric"], s["mode"], f"best_{s['metric']}"
    scored = table[table[score].notna()]
    trial_s = own_s if trials else float(table.time_s.fillna(0).sum())
    lines = ["", f"Search finished: {exp_dir}"]
    if len(scored):
        best = scored.loc[scored[score].idxmax() if mode == "max" else scored[score].idxmin()]
        params = {name: plain(best[name]) for name in spaces.searched_names(space) if not pd.isna(best[name])}
        lines += [f"  best trial   {best.trial_id}: {score}={best[score]:.4f} at epoch {int(best.best_epoch)} "
                  f"({mode} {metric}; final {metric}={best[metric]:.4f}, {best.epochs} epochs)",
                  f"  best config  {params}",
                  f"  checkpoint   {best.checkpoint}"]
    terminated, stopped = int((table.status == "TERMINATED").sum()), int(table.stopped_early.sum())
    lines += [
        f"  trials       {len(table) + pending} run: {terminated - stopped} complete, {stopped} stopped early by "
        f"ASHA, {int((table.status == 'ERROR').sum())} errored, "
        f"{int((table.status == 'UNFINISHED').sum()) + pending} unfinished"
        + (f", {int((table.status == 'ABANDONED').sum())} abandoned (started by a killed driver before Ray saved "
           "them; never resumed)" if (table.status == "ABANDONED").any() else ""),
        f"  optuna study {study_states(exp_dir, space)} (ASHA's early stops are PRUNED); {study_where(exp_dir)}",
        f"  wall time    {wall_s:.1f} s; trials' own time {trial_s:.1f} s; they ran {mean:.2f} at a time on "
        f"average, at most {most}, in {slots} slot(s); driver overhead {wall_s - trial_s / slots:.1f} s "
        f"(wall - trial time / slots)",
        f"  results      {storage.join(exp_dir, 'trials.csv')}; tensorboard --logdir {exp_dir}",
    ]
    return lines


def resumed_experiment(args, runs):
    """(experiment folder, its saved space) to continue: --name in --storage, else the latest one."""
    from tune import searcher

    try:
        exp_dir = storage.join(runs, args.name) if args.name else experiment.latest_experiment(runs)
        experiment.check(exp_dir)
    except ExperimentError as err:
        fail(f"--resume: {err}")
    try:
        searcher.read_state(exp_dir)
    except searcher.PickledSearcherState as err:
        fail(f"--resume: {err}")
    except ExperimentError:   # no searcher state yet: Tune's own check below says what is missing
        pass
    else:   # its study's database answers (a server may be down): one line before Ray starts
        with searcher.open_study(exp_dir):
            pass
    space = saved_space(exp_dir)
    try:
        differ = resume_differences(args, exp_dir, space)
    except UserError as err:
        fail(f"--resume: {err}")
    if differ:
        fail(f"--resume continues {exp_dir} as it was searched (its search_space.yaml), but the command line "
             f"says otherwise: {'; '.join(differ)}. Drop those flags (--time-budget may change), or start a new "
             "search with another --name")
    print(f"Resuming {exp_dir} with its saved space, data and settings (--time-budget may change)")
    if args.time_budget is not None:   # this session's budget
        none = args.time_budget.strip().lower() in ("none", "null")
        if not none and spaces.parse_duration(args.time_budget) is None:
            fail(f"--time-budget: {args.time_budget!r} is not a duration; allowed: e.g. 90s, 30m, 2h, 1h30m, or none")
        space["search"]["time_budget"] = None if none else args.time_budget
    return exp_dir, space


def resume_differences(args, exp_dir, space):
    """What --space, --data, --set, --smoke-test and the search flags given with --resume say differently from
    the experiment's saved space, one "name (saved: x, now: y)" each; [] when they say the same or are not given
    (the same command again with --resume is fine; another space or data set would silently be ignored)."""
    from dogs.config import parse_sets
    from dogs.data import resolve_root

    settings = {k: v for k, v in settings_from_args(args).items() if v is not None and k != "time_budget"}
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
            raw = spaces.load_yaml(Path(local, experiment.SPACE_FILE).read_text())
        raw.pop("data", None)
        given = spaces.validate(raw, storage.join(exp_dir, experiment.SPACE_FILE), overrides, sets, data)
    differ = [f"search.{key} (saved: {space['search'][key]!r}, now: {given['search'][key]!r})"
              for key in space["search"] if key != "time_budget" and given["search"][key] != space["search"][key]]
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


def small_validation_warning(data_root, search):
    """A warning when ASHA will rank trials by early epochs on a validation split this small, else None: a
    score over a handful of images per class barely predicts a trial's final one, and ASHA stops trials by it."""
    from collections import Counter

    from dogs.data import VALIDATION, labeled_split

    if search["scheduler"] != "asha" or search["grace_period"] >= search["epochs"]:
        return None
    _, _, labels = labeled_split(data_root, VALIDATION)
    fewest = min(Counter(labels).values())
    if fewest >= SMALL_VALIDATION:
        return None
    return (f"Warning: Validation/ has {fewest} image(s) in its smallest class ({len(labels)} in all): an early "
            f"epoch's score on so few (< {SMALL_VALIDATION} per class) ranks trials poorly, and ASHA stops trials "
            f"by it from epoch {search['grace_period']}. Consider --scheduler fifo, a grace_period nearer epochs "
            f"({search['epochs']}), or a larger validation split (docs/search.md, Samplers and schedulers)")


def missing_weights_warning(space):
    """A warning naming the ImageNet weights the space's trials can ask for that are not in this machine's hub
    cache, else None: each such trial downloads them first, and offline it errors, after a network timeout."""
    import torchvision

    from dogs.backbones import BACKBONES
    from dogs.config import DEFAULTS, weights_file
    from dogs.models import hub_file

    def values(name):   # every value a parameter can take; the default when not in the space
        entry = next((p for p in space["params"] if p["name"] == name), None)
        return [DEFAULTS[name]] if entry is None else spaces.possible_values(entry) or []

    missing = []
    for model in values("model"):
        enums = getattr(torchvision.models, BACKBONES[model].weights or "", None) if model in BACKBONES else None
        for weights in values("weights") if enums else []:
            if isinstance(weights, str) and not weights_file(weights) and weights in enums.__members__:
                path = hub_file(enums[weights])
                if not path.is_file() and str(path) not in missing:
                    missing.append(str(path))
    if not missing:
        return None
    return (f"Warning: {len(missing)} ImageNet weights file(s) the trials may use are not in this machine's hub "
            f"cache: {', '.join(missing)}. Each trial that uses them downloads them first; offline, it errors after "
            "a network timeout. Copy the files there (TORCH_HOME chooses the folder), or give weights=/path/to/file.pth")


def new_experiment(args, runs):
    """(experiment folder, space) of a new search: the data resolved, the space file checked."""
    from dogs.data import TRAIN, DataError, check_metric, labeled_split, resolve_root

    if not args.space:
        fail("--space is required (a file in search_spaces/ or a path), unless --resume")
    try:
        data_root, is_demo = resolve_root(args.data)
    except DataError as err:
        fail(f"--data: {err}")
    if is_demo:
        print(f"No --data given: using the built-in demo data set (handwritten digits) at {data_root}")
    try:
        space = load_space(args, None if is_demo else data_root)
        check_metric(space["search"]["metric"], labeled_split(data_root, TRAIN)[0], data_root)
    except UserError as err:   # a bad space file or --set value
        fail(str(err))
    for warning in (small_validation_warning(data_root, space["search"]),
                    None if args.address or os.environ.get("RAY_ADDRESS") else missing_weights_warning(space)):
        if warning:
            print(warning)
    name = args.name or f"{Path(space['file']).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    exp_dir = storage.join(runs, name)
    if storage.is_file(storage.join(exp_dir, "search_space.yaml")):
        fail(f"{exp_dir} exists; pick another --name, or continue it with --resume --name {name}")
    return exp_dir, space


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        return search(args)
    except UserError as err:   # helpers raise; the command prints once
        fail(err)


def search(args):
    """The whole command: check the space and the data, start Ray, run the search, print the summary."""
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        # a local Ray would listen on every interface; keep it on 127.0.0.1 (Ray reads this when imported)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray's own TensorBoard writer off (ours writes curves + HParams); JSON/CSV loggers are added explicitly
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Ray's record of each trial's checkpoints (in every save of the experiment state) holds only their score:
    # it keeps every epoch's (tune.checkpoints deletes the folders), not the whole result of each
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
    runs = storage.resolve(args.storage)

    # the space and the data: checked before Ray starts
    exp_dir, space = resumed_experiment(args, runs) if args.resume else new_experiment(args, runs)
    search = space["search"]
    if not args.resume and search["gpus_per_trial"] > 0 and not (args.address or os.environ.get("RAY_ADDRESS")):
        import torch

        if not torch.cuda.is_available():
            check_resources(search, {"CPU": os.cpu_count(), "GPU": 0})

    # Ray: local or a cluster, and requests it can meet
    import ray

    # trial workers of a local Ray wait for each other before their first trial (dogs.trial.wait_for_workers)
    workers = None
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        import tempfile

        from dogs.trial import WORKERS_ENV

        workers = tempfile.mkdtemp(prefix="dogs-tune-workers-")
        os.environ[WORKERS_ENV] = workers   # Ray's processes inherit it

    try:
        try:
            resources = start_ray(args.address, args.verbose)
        except KeyboardInterrupt:
            ray.shutdown()   # whatever part of Ray had started
            print(interrupted_at_start(args, runs, exp_dir), file=sys.stderr)
            return 130
        try:
            return run(args, space, exp_dir, runs, resources, workers)
        finally:
            ray.shutdown()
    finally:
        if workers:
            shutil.rmtree(workers, ignore_errors=True)
            os.environ.pop(WORKERS_ENV, None)


def run(args, space, exp_dir, runs, resources, workers=None):
    """Check resources, build or restore the tuner, fit, write trials.csv and print the summary."""
    from ray import tune

    search = space["search"]
    joined = bool(args.address or os.environ.get("RAY_ADDRESS"))
    check_resources(search, resources, autoscaling=joined)
    slots = concurrency(search, resources)
    if args.resume:  # only the trials not finished yet run: no worker waits for a slot no trial will fill
        finished = sum(trial.status == "TERMINATED" for trial in experiment.read_trials(exp_dir))
        slots = max(1, min(slots, search["samples"] - finished))
    if joined:  # Tune keeps 1 trial pending with a searcher: let the autoscaler see several at once
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(search["max_concurrent"] or 8))
    if workers:   # how many trial workers start together (dogs.trial.wait_for_workers)
        Path(workers, "slots").write_text(str(slots))

    # the tuner: new, or restored with the searcher's state and the trials' checkpoints
    if args.resume:
        if not tune.Tuner.can_restore(exp_dir):
            fail(f"--resume: {exp_dir} has no saved experiment state to continue from")
        from tune.searcher import StudySearcher

        StudySearcher.resumed_in = exp_dir   # its study.db is here, wherever the experiment was searched
        tuner = tune.Tuner.restore(exp_dir, trainable=make_trainable(search), resume_errored=True)
    else:
        tuner = make_tuner(space, runs, storage.name(exp_dir), args.optuna_storage, args.verbose,
                           slots=None if joined else slots)
        storage.write_text(storage.join(exp_dir, "search_space.yaml"), spaces.to_yaml(space))
    print(f"Searching {search['samples']} trials x {search['epochs']} epochs, {slots} at a time; "
          f"results in {exp_dir}")

    # run (within the time budget, if any), then one table of all trials and a summary
    start = time.time()
    from tune.searcher import StudySearcher

    StudySearcher.lost = None
    try:
        with time_budget(spaces.parse_duration(search["time_budget"]) if search["time_budget"] else None) as budget:
            grid = tuner.fit()
    finally:
        from tune.searcher import StudySearcher

        StudySearcher.resumed_in = None
    if StudySearcher.lost:   # its database went away: Tune stopped as on Ctrl-C; what it could not write is saved
        print(f"dogs-search: error: {StudySearcher.lost}; once it answers again, continue with  python -m tune.search "
              f"--resume --storage {shlex.quote(runs)} --name {storage.name(exp_dir)}", file=sys.stderr)
        return 1
    wall_s = time.time() - start
    trials = experiment.read_trials(exp_dir)
    table = trials_table(exp_dir, space, trials)
    pending = max(0, len(grid) - len(table))   # trials Tune created that never started: no folder yet
    storage.write_text(storage.join(exp_dir, "trials.csv"), table.to_csv(index=False))
    print("\n".join(summary(table, space, wall_s, slots, exp_dir, pending, trials, since=start) + failure_hints(exp_dir, table)))
    print("\n".join(plots.report(exp_dir)))
    if pending or (table.status == "UNFINISHED").any() or len(grid) < search["samples"]:
        why = f"Time budget {search['time_budget']} used up" if budget.is_set() else "Interrupted"
        print(f"{why}: continue with  python -m tune.search --resume --storage {shlex.quote(runs)} "
              f"--name {storage.name(exp_dir)}")
        return 0 if budget.is_set() else 130
    if not table[f"best_{search['metric']}"].notna().any():   # every trial errored or diverged: nothing to hand over
        print(f"dogs-search: error: no trial reported a finite {search['metric']} ({int((table.status == 'ERROR').sum())} "
              f"of {len(table)} errored; see the lines above): there is no best trial", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
