"""Hyper-parameter search: Optuna TPE proposes configs, ASHA stops the weak ones early, Ray Tune runs them.

    python -m tune.search --space resnet_unfreeze.yaml --data DIR
    python -m tune.search --space cnn_scratch.yaml --smoke-test          # tiny, on the demo data
    python -m tune.search --resume                                       # continue the latest experiment

The experiment folder (<storage>/<name>) holds every trial's results and checkpoints (best + last),
search_space.yaml (what was searched), trials.csv (all trials, one row each) and TensorBoard files
(`tensorboard --logdir <experiment>`: curves and an HParams comparison). docs/search.md has the details.

This file is the command only; its parts: tune.spaces (flags), tune.ray_setup (Ray), tune.ray_tuner (the Tuner),
tune.resume (--resume), tune.report (warnings, trials.csv, the summary). docs/ARCHITECTURE.md has the map.
"""
import contextlib
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from dogs import interrupt
from dogs.cli import fail, quiet_when_reader_leaves
from dogs.data import TRAIN, DataError, check_metric, labeled_split, resolve_root
from dogs.errors import StorageError, UserError
from dogs.files import CSV
from tune import spaces, storage, ray_setup, settings, resume, trackers
from tune.experiment import Experiment, default_name, name_problem, read_trials


@quiet_when_reader_leaves
def main(argv=None):
    args = spaces.get_args_parser().parse_args(argv)
    args.command = storage.command_line("python -m tune.search", sys.argv[1:] if argv is None else argv)
    try:
        return search(args)
    except UserError as err:   # helpers raise; the command prints once
        fail("dogs-search", err)


def search(args):
    """The whole command: check the space and the data, start Ray, run the search, print the summary."""
    began = time.time()   # a time budget counts from here: the whole command ends within it (and an epoch)
    if args.name is not None and name_problem(args.name):   # before anything: the name makes folders and URLs
        raise UserError(f"--name: {name_problem(args.name)}")
    ray_setup.set_environment(args.address, args.verbose)
    interrupt.catch_sigterm()   # SIGTERM (Slurm, Kubernetes, spot preemption, kill) stops as Ctrl-C does
    args.log = trackers.parse_log(args.log)   # a missing package: said before anything starts
    if args.resume and (args.log or args.mlflow_uri):
        raise UserError("--log/--mlflow-uri with --resume: a resumed search logs to the trackers it was started "
                        "with (they are in Ray's saved state); resume without them")
    if args.resume and args.warm_start:
        raise UserError("--warm-start with --resume: a resumed search's study already holds the trials it was warm-"
                        "started with (they are added once, when its study is created); resume without it")
    if args.resume and args.optuna_storage:
        raise UserError("--optuna-storage with --resume: a resumed search continues its study in the database it "
                        "was started with (its saved searcher state names it); resume without it")
    trackers.check_mlflow(args.log, args.mlflow_uri)   # a tracker that does not answer: one line, before Ray
    if args.optuna_storage:   # the study's database opened and pinged, within seconds
        from tune.study import storage_problem

        why = storage_problem(args.optuna_storage)
        if why:
            raise UserError(why)
    from tune import resume   # here: it imports Optuna (slow; --help does without)

    runs = storage.absolute(args.storage)

    # the space and the data: checked before Ray starts
    exp_dir, space = resume.resumed_experiment(args, runs) if args.resume else new_experiment(args, runs)
    args.warm_trials = []   # --warm-start: the old search's trials that seed the new study, read before Ray starts
    if args.warm_start:
        from tune import warm_start

        args.warm_trials, said = warm_start.load_trials(args.warm_start, runs, space)
        print(said)
    budget = space["search"]["time_budget"]
    args.deadline = began + settings.parse_duration(budget) if budget else None   # for the trials and the driver
    if "mlflow" in args.log:   # an experiment in a bucket needs --mlflow-uri: said before Ray starts
        trackers.mlflow_uri(exp_dir, args.mlflow_uri)
    with storage.held(exp_dir, args.command):   # one command per experiment at a time: a second one is one line
        if not args.resume:   # again, under the lock: another search may have started it meanwhile
            refuse_existing(exp_dir)
        return search_experiment(args, runs, exp_dir, space)


def search_experiment(args, runs, exp_dir, space):
    """The search of a checked experiment, holding its lock: start Ray (local or a cluster), then fit."""
    joined = ray_setup.joins_cluster(args.address)
    s = space["search"]
    if not args.resume and s["gpus_per_trial"] > 0 and not joined:
        import torch   # here: only a GPU search asks

        if not torch.cuda.is_available():
            ray_setup.check_resources(s, {"CPU": os.cpu_count(), "GPU": 0})

    # Ray: local or a cluster, and requests it can meet; a time budget's deadline for the trials (dogs.ray_trainable)
    import ray
    from dogs.ray_trainable import DEADLINE_ENV

    with ray_setup.worker_folder(args.address) as workers:
        try:
            resources = ray_setup.start_ray(args.address, args.verbose,
                                            env={DEADLINE_ENV: repr(ray_setup.trials_deadline(args.deadline))}
                                            if args.deadline else None)
            interrupt.catch_sigterm()   # again: ray.init installs its own handler (exit 1, no resume line)
        except KeyboardInterrupt:
            ray.shutdown()   # whatever part of Ray had started
            print(interrupted_at_start(args, runs, exp_dir), file=sys.stderr)
            return interrupt.exit_status()
        try:
            return fit(args, space, exp_dir, runs, resources, workers)
        finally:
            ray.shutdown()


def new_experiment(args, runs):
    """(experiment folder, space) of a new search: the data resolved, the space file checked, warnings said."""
    from tune import report   # here and in fit, after set_environment: they import Ray, which reads it then

    if not args.space:
        raise UserError("--space is required (a file in search_spaces/ or a path), unless --resume")
    try:
        data_root, is_demo = resolve_root(args.data)
    except DataError as err:
        raise UserError(f"--data: {err}") from None
    if is_demo:
        print(f"No --data given: using the built-in demo data set (handwritten digits) at {data_root}")
    space = spaces.space_from_args(args, None if is_demo else data_root)   # a bad space file or --set value raises
    try:   # a held-out part needs every class on both sides
        report.holdout_check(data_root, space["search"]["holdout"])
    except DataError as err:
        raise UserError(f"search.holdout: {err}") from None
    check_metric(space["search"]["metric"], labeled_split(data_root, TRAIN)[0], data_root)   # val_top5, <= 5 classes
    if not ray_setup.joins_cluster(args.address):   # a cluster's nodes have their own hub caches (docs/cluster.md)
        report.check_weights(space)
    warning = report.small_validation_warning(data_root, space["search"])
    if warning:
        print(warning)
    name = args.name or default_name(Path(space["file"]).stem, f"{datetime.now():%Y%m%d-%H%M%S}")
    exp_dir = storage.join(runs, name)
    refuse_existing(exp_dir)
    return exp_dir, space


def refuse_existing(exp_dir):
    """A new search never writes into an experiment that exists."""
    if storage.is_file(storage.join(exp_dir, "search_space.yaml")):
        name = storage.name(exp_dir)
        raise UserError(f"{exp_dir} exists; pick another --name, or continue it with --resume --name {name}")


def interrupted_at_start(args, runs, exp_dir):
    """The line printed when Ctrl-C stops Ray's start-up: nothing ran; how to start again."""
    if args.resume:
        again = f"continue with  python -m tune.search --resume --storage {shlex.quote(runs)} " \
                f"--name {shlex.quote(storage.name(exp_dir))}"
    else:
        again = "rerun the same command"
    return f"dogs-search: interrupted while starting Ray; nothing ran yet: {again}"


def make_or_restore_tuner(args, space, exp_dir, runs, slots, joined, session):
    """(the tuner, the trial folders there before it runs): a new search's; --resume: Ray's restored, or one rebuilt
    from the trial folders when Ray's state is cut or missing (None: every trial finished). Its searcher and
    callbacks report to `session` (tune.callbacks)."""
    from tune import ray_tuner

    s = space["search"]
    before = 0
    if args.resume:
        cut = resume.state_problem(exp_dir)   # Ray's state cut or missing: found before Ray reads it (tune.resume)
        if cut:
            need, before, optuna_storage = resume.rebuild_from_trials(exp_dir, space, cut)
            grid_tuner = ray_tuner.make_tuner(space, runs, storage.name(exp_dir), optuna_storage, args.verbose,
                                          slots=None if joined else slots, rung_slots=slots,
                                          extend=need, session=session) if need else None
        else:
            grid_tuner = ray_tuner.restore_tuner(s, exp_dir, session)
        storage.write_text(storage.join(exp_dir, "search_space.yaml"), spaces.to_yaml(space))   # --samples N
    else:
        with starting(exp_dir):   # a failed write here: nothing ran, and the half-made folder goes
            grid_tuner = ray_tuner.make_tuner(space, runs, storage.name(exp_dir), args.optuna_storage, args.verbose,
                                          slots=None if joined else slots, rung_slots=slots,
                                          loggers=trackers.callbacks(args.log, exp_dir, storage.name(exp_dir),
                                                                     args.mlflow_uri), session=session,
                                          warm_trials=args.warm_trials)
            storage.write_text(storage.join(exp_dir, "search_space.yaml"), spaces.to_yaml(space))
    return grid_tuner, before


def fit(args, space, exp_dir, runs, resources, workers=None):
    """Check resources, build or restore the tuner, fit, write trials.csv and print the summary."""
    from tune import progress, report, ray_tuner
    from tune.ray_tuner import flat_reason

    s = space["search"]
    joined = ray_setup.joins_cluster(args.address)
    ray_setup.check_resources(s, resources, autoscaling=joined)
    slots = ray_setup.concurrency(s, resources)
    if args.resume:  # only the trials not finished yet run: no worker waits for a slot no trial will fill
        finished = sum(trial.status == "TERMINATED" for trial in read_trials(exp_dir))
        slots = max(1, min(slots, s["samples"] - finished))
    if joined:  # Tune keeps 1 trial pending with a searcher: let the autoscaler see several at once
        os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(s["max_concurrent"] or 8))
    if workers:   # how many trial workers start together (dogs.ray_trainable.wait_for_workers)
        Path(workers, "slots").write_text(str(slots))

    # the tuner: new, or restored with the searcher's state and the trials' checkpoints
    resume = f"free space, then continue with  {resume_command(runs, exp_dir)}"
    from tune.callbacks import SearchSession   # here: it imports Ray, after set_environment

    session = SearchSession(exp_dir=exp_dir)   # what the searcher and callbacks tell this fit (tune.callbacks)
    grid_tuner, before = make_or_restore_tuner(args, space, exp_dir, runs, slots, joined, session)
    # what it runs and about how long (at this machine's measured seconds per epoch, if any)
    print(progress.plan_line(space, slots, exp_dir,
                             settings.parse_duration(s["time_budget"]) if s["time_budget"] else None))
    if s["scheduler"] == "asha" and s["fidelity"] == "time" and not args.resume:
        _, grace, max_t = settings.asha_rungs(s, slots)
        rungs = [grace * s["reduction_factor"] ** k for k in range(64)]
        print(f"ASHA's rungs at {', '.join(f'{r:.3g}' for r in rungs if r <= max_t)} s of each trial's training "
              "(search.fidelity: time)")

    # run (within the time budget, if any), then one table of all trials and a summary
    start = time.time()
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        with ray_tuner.time_budget(args.deadline, session.checkpointed) as budget, \
                storage.writing("the experiment (Ray's state, the trials' results, study.db)", exp_dir, resume):
            grid = grid_tuner.fit() if grid_tuner else []   # a rebuilt run with every trial finished: none
            # --resume --samples N: once Ray's saved trials are done, the trials still missing, on the same study
            table = report.trials_table(exp_dir, space) if args.resume else None
            extra = s["samples"] - int((table.status != "ABANDONED").sum()) if args.resume else 0
            # a search stopped by search.stop_when_flat stays stopped: more trials could not help
            flat = extra > 0 and s["stop_when_flat"] and flat_reason(s, Experiment(exp_dir, space).trials,
                                                                     exp_dir)
            if extra > 0 and not budget.is_set() and not (table.status == "UNFINISHED").any() and not flat:
                print(f"Extending the search by {extra} trial(s) on its study ({s['samples']} in all)")
                before = len(table)
                grid = ray_tuner.make_tuner(space, runs, storage.name(exp_dir), study_storage(exp_dir), args.verbose,
                                        slots=None if joined else slots, rung_slots=slots, extend=extra,
                                        session=session).fit()
    finally:
        if threading.current_thread() is threading.main_thread():   # Tune leaves its Ctrl-C handler after fit:
            signal.signal(signal.SIGINT, ctrl_c)                     # a later Ctrl-C would only set its flag
    if session.lost:   # its database went away: Tune stopped as on Ctrl-C; what it could not write is saved
        print(f"dogs-search: error: {session.lost}; once it answers again, continue with  "
              f"{resume_command(runs, exp_dir)}", file=sys.stderr)
        return 1
    return finish(space, exp_dir, runs, slots, start, before + len(grid), budget.is_set(), args.mlflow_uri)


def finish(space, exp_dir, runs, slots, start, expected, budget_used, mlflow_uri=None):
    """After fit: trials.csv, the summary and the plots, and the exit status (0; 130/143 interrupted; 1: no trial
    scored). `expected`: the trial folders there would be had every trial Tune created started."""
    from tune import progress, report
    from tune.ray_tuner import flat_reason

    s, wall_s = space["search"], time.time() - start
    resume = f"free space, then continue with  {resume_command(runs, exp_dir)}"
    trials = Experiment(exp_dir, space).trials   # read once (the ones that cannot be read: one warning)
    table = report.trials_table(exp_dir, space, trials)
    pending = max(0, expected - len(table))   # trials Tune created that never started: no folder yet
    created = int((table.status != "ABANDONED").sum()) + pending
    stopped = pending or (table.status == "UNFINISHED").any() or created < s["samples"]
    flat = flat_reason(s, trials, exp_dir) if stopped and not budget_used else None   # search.stop_when_flat
    failed = report.user_errors(trials)   # {one line: trial ids}: trials that failed before an epoch, not retried
    all_failed = bool(failed) and sum(map(len, failed.values())) == int((table.status != "ABANDONED").sum())
    why = flat or ("every trial failed before its first epoch" if all_failed and not budget_used else
           f"Time budget {s['time_budget']} used up" if budget_used else "Interrupted") if stopped else None
    with storage.writing("the table of trials", storage.join(exp_dir, "trials.csv"), resume):
        storage.write_text(storage.join(exp_dir, "trials.csv"), table.to_csv(**CSV))
    progress.record(space, table)   # this machine's seconds per epoch, for the next search's plan line
    print("\n".join(report.summary(table, space, wall_s, slots, exp_dir, pending, trials, since=start, stopped=why)
                    + trackers.where_lines(exp_dir, storage.name(exp_dir), mlflow_uri)
                    + report.failure_hints(exp_dir, table) + report.user_error_lines(failed)))
    print("\n".join(report.report(exp_dir)))
    if all_failed:   # tune.ray_tuner.UserErrorStop ended it: the same error would end every further trial
        print(f"dogs-search: error: {sum(map(len, failed.values()))} trial(s) ran, each failed before its first epoch "
              f"(not retried; {' | '.join(failed)}): fix that and run the search again", file=sys.stderr)
        return 1
    if stopped and not flat:
        print(f"{why}: continue with  {resume_command(runs, exp_dir)}")
        return 0 if budget_used else interrupt.exit_status()
    if not table[f"best_{s['metric']}"].notna().any():   # every trial errored or diverged: nothing to hand over
        print(f"dogs-search: error: no trial reported a finite {s['metric']} ({int((table.status == 'ERROR').sum())} "
              f"of {len(table)} errored; see the lines above): there is no best trial", file=sys.stderr)
        return 1
    return 0


def study_storage(exp_dir):
    """The --optuna-storage an experiment was searched with (None: its own study.db)."""
    from tune.study import read_state

    state = read_state(exp_dir)
    return None if state["in_experiment"] else state["study_url"]


def resume_command(runs, exp_dir):
    return f"python -m tune.search --resume --storage {shlex.quote(runs)} --name {storage.name(exp_dir)}"


@contextlib.contextmanager
def starting(exp_dir):
    """A failed write while a new experiment starts (its folder, study.db, search_space.yaml) is one line, and the
    folder this command made is removed (nothing ran): the same command runs again once there is space."""
    made = not storage.is_uri(exp_dir) and (not Path(exp_dir).exists() or storage.only_lock(exp_dir))
    again = "free space, then rerun the same command"
    try:
        with storage.writing("a new experiment", exp_dir, again):
            yield
    except StorageError:
        if made:
            shutil.rmtree(exp_dir, ignore_errors=True)
        raise


from tune.old_pickles import search_attribute as __getattr__   # noqa: E402  the name older pickles hold


if __name__ == "__main__":
    sys.exit(main())
