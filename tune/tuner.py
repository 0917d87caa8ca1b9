"""The Ray Tune Tuner of a search: the trainable with its resources, the Optuna study's searcher, ASHA or FIFO,
the callbacks (checkpoint retention, TensorBoard, the progress line), a restored one for --resume, and the
time budget that stops it as Ctrl-C does."""
import contextlib
import os
import signal
import threading
import time

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from dogs import trainable
from dogs.errors import USER_ERROR_KEY, UserError
from tune import names, storage
from tune.settings import asha_rungs
from tune.progress import ProgressCallback
from tune.retention import KeepBestAndLatest
from tune.searcher import StudySearcher
from tune.session import restoring
from tune.spaces import searched_names
from tune.stop_when_flat import FlatStop, FlatWatch, min_trials
from tune.tensorboard import TensorBoardCallback
from tune.trial_logs import CSVLogger, JsonLogger


class UserErrorStop(tune.Stopper):
    """Ends the search once its first `first` trials all failed with a user error before their first epoch (each
    reports it as its one result: dogs.trial) and no trial ran an epoch: every further trial would fail too."""

    def __init__(self, first):
        self.first, self.failed, self.ran = first, set(), False

    def __call__(self, trial_id, result):   # True: that trial stops now (ASHA never ranks its NaN), completed
        if USER_ERROR_KEY in result:
            self.failed.add(trial_id)
            return True
        self.ran = True
        return False

    def stop_all(self):
        return not self.ran and len(self.failed) >= self.first


def make_trainable(s):
    """dogs.trainable with the CPUs and GPUs each trial holds."""
    return tune.with_resources(trainable, {"cpu": s["cpus_per_trial"], "gpu": s["gpus_per_trial"]})


def trial_dirname(trial):
    """Short trial folders: trial_<id> (Ray's default folder name repeats the whole config); the trial names of
    experiments made before tune.names (their pickles name this function)."""
    return f"trial_{trial.trial_id}"


def make_tuner(space, runs, name, optuna_storage=None, verbose=False, slots=None, rung_slots=1, loggers=(), extend=0,
               session=None, warm_trials=()):
    """Tuner: the Optuna study's searcher, ASHA (or FIFO) scheduler, bounded checkpoints, retries, TensorBoard,
    and the trackers' callbacks (`loggers`: tune.trackers). `extend`: that many more trials in an existing
    experiment folder, asked of its study (--resume --samples N). `session`: what the searcher and the retention
    callback tell the driver (tune.session). `warm_trials`: finished study trials of an old search added to the
    new study (tune.warm_start)."""
    s = dict(space["search"], samples=extend) if extend else space["search"]
    # one "best": TPE, ASHA and Tune rank a trial by its best epoch so far (best_<metric>, reported every epoch),
    # and Ray keeps each trial's best epoch's checkpoint (by <metric>) — what tune.best predicts from
    score = f"best_{s['metric']}"
    searcher = StudySearcher(space["params"], score, s["mode"], max_t=s["epochs"], exp_dir=storage.join(runs, name),
                             optuna_storage=optuna_storage, sampler=s["sampler"], seed=s["seed"],
                             samples=s["samples"], first_trials=() if extend else space["first_trials"],
                             extend=bool(extend), session=session, warm_trials=warm_trials)
    # search.stop_when_flat: Tune's stop_all once M fairly tried trials in a row could not beat the best's interval
    flat = (FlatWatch(s["metric"], s["mode"], s["stop_when_flat"], storage.join(runs, name),
                      at_least=min_trials(space["search"])) if s.get("stop_when_flat") else None)
    stop = UserErrorStop(min(s["samples"], max(2, slots or rung_slots)))
    time_attr, grace, max_t = asha_rungs(s, rung_slots)   # epochs, or seconds of training (search.fidelity)
    scheduler = ASHAScheduler(time_attr=time_attr, max_t=max_t, grace_period=grace,
                              reduction_factor=s["reduction_factor"]) if s["scheduler"] == "asha" else FIFOScheduler()
    return tune.Tuner(
        make_trainable(s),
        param_space={"epochs": s["epochs"], "metric": s["metric"], "mode": s["mode"], "holdout": s["holdout"]},
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=s["samples"], metric=score,
            mode=s["mode"], reuse_actors=True, max_concurrent_trials=s["max_concurrent"] or slots,
            trial_name_creator=names.named, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=runs, verbose=1 if verbose else 0,   # 0: our progress line only
            stop=tune.stopper.CombinedStopper(stop, FlatStop(flat)) if flat else stop,
            # Ray deletes no checkpoint (num_to_keep would save the whole experiment state after every
            # checkpoint: O(N) per checkpoint); KeepBestAndLatest keeps each trial's best and latest
            checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=s["metric"],
                                                    checkpoint_score_order=s["mode"]),
            failure_config=tune.FailureConfig(max_failures=s["max_failures"]),
            callbacks=[JsonLogger(), CSVLogger(),   # whole across a trial's retries (tune.trial_logs)
                       BudgetWatch(), TensorBoardCallback(space["params"], s["metric"]),
                       KeepBestAndLatest(s["metric"], s["mode"], session),
                       *loggers, *([flat] if flat else [])]
                      + ([] if verbose else [ProgressCallback(s["samples"], s["epochs"], s["metric"], s["mode"],
                                                              searched=searched_names(space),
                                                              exp_dir=storage.join(runs, name))]),
        ),
    )


def restore_tuner(s, exp_dir, session):
    """The tuner of an interrupted experiment: its searcher's state (the study in `session.exp_dir`, wherever the
    experiment was searched) and the trials' checkpoints; errored trials run again."""
    if not tune.Tuner.can_restore(exp_dir):
        raise UserError(f"--resume: {exp_dir} has no saved experiment state to continue from")
    with restoring(session):   # the searcher and callbacks Ray unpickles from tuner.pkl take this session
        return tune.Tuner.restore(exp_dir, trainable=make_trainable(s), resume_errored=True)


class BudgetWatch(tune.Callback):
    """Which running trials are out of budget (their last result's budget_spent, dogs.trial: they start no more
    epochs) and the longest epoch seen; class-level, so that a restored tuner's copy feeds the same table."""

    lock = threading.Lock()
    running = {}   # {trial id: budget spent}
    longest_s = 0.0

    @classmethod
    def reset(cls):
        with cls.lock:
            cls.running, cls.longest_s = {}, 0.0

    @classmethod
    def all_spent(cls, none_running=True):
        """Whether no running trial will start another epoch (`none_running` when no trial runs)."""
        with cls.lock:
            return all(cls.running.values()) if cls.running else none_running

    def on_trial_start(self, iteration, trials, trial, **info):
        with self.lock:
            self.running[trial.trial_id] = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        with self.lock:
            self.running[trial.trial_id] = bool(result.get("budget_spent"))
            BudgetWatch.longest_s = max(self.longest_s, result.get("time_this_iter_s") or 0.0)

    def on_trial_complete(self, iteration, trials, trial, **info):
        with self.lock:
            self.running.pop(trial.trial_id, None)

    on_trial_error = on_trial_complete


@contextlib.contextmanager
def time_budget(deadline, progress):
    """An Event set when the budget's `deadline` (Unix seconds; None: no budget) has passed; the search then stops
    as on Ctrl-C, once every running trial is at an epoch boundary it will not pass (dogs.trial starts no epoch
    that would end after the deadline, and says so in its result), so no epoch in flight is thrown away; and once
    this session has saved at least one epoch (`progress` is set: the session's checkpointed): a budget shorter than a trial's start-up
    still moves each --resume forward instead of stopping every session before anything ran. When every running
    trial is out of budget before the deadline, it stops then. A trial whose first epoch is still running is
    waited for at most 1.5 x the longest epoch seen + 30 s.

    Tune stops gracefully on SIGUSR1 as on SIGINT: the experiment state saved, running trials left to resume
    from their last checkpoint. (Tune's own time_budget_s marks running trials TERMINATED: --resume would
    skip them, and it throws away the epochs in flight.) The signal repeats every 5 s until fit() returns, in case
    one came before Tune listened; Ray's "Stop signal received" line is left out (tune.ray_setup.quiet_driver).
    """
    expired, done = threading.Event(), threading.Event()
    BudgetWatch.reset()
    ProgressCallback.deadline = deadline
    if not deadline:
        yield expired
        return
    if threading.current_thread() is not threading.main_thread():
        raise UserError("--time-budget works only when the search runs in the main thread (Tune's stop signal)")
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)   # never the default action (exit)

    def stop():
        # until the deadline, or until every running trial has stopped for the budget
        while not done.wait(1.0) and time.time() < deadline \
                and not (progress.is_set() and BudgetWatch.all_spent(none_running=False)):
            pass
        if done.is_set():
            return
        expired.set()
        if not progress.is_set():
            print(f"Time budget used up before a trial saved an epoch in this session: stopping once one has (so "
                  "that --resume moves on)", flush=True)
        while not (done.is_set() or progress.wait(0.5)):   # the first epoch saved, or the search ended
            pass
        # the epochs in flight: each trial reports its last one (at most 1.5 x the longest epoch + 30 s)
        waited = time.time()
        while not (done.wait(0.5) or BudgetWatch.all_spent()
                   or time.time() - waited > 1.5 * BudgetWatch.longest_s + 30):
            pass
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
        ProgressCallback.deadline = None
