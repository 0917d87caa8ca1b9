"""The Ray Tune Tuner of a search: the trainable with its resources, the Optuna study's searcher, ASHA or FIFO,
the callbacks (checkpoint retention, TensorBoard, the progress line), a restored one for --resume, and the
time budget that stops it as Ctrl-C does.

search.stop_when_flat: M. The search ends once M fairly tried trials in a row could not beat the best's interval.

The rule in one sentence: after the sampler's start-up trials have finished, the search stops once M finished trials
in a row, each of which ran as many epochs as the best trial took to reach its best score (or all its epochs), scored
no better than the better end of the best's 95% interval.

A finished trial (it ran its epochs, or ASHA stopped it) beats the best when its score lies beyond the better end of
the best finished trial's 95% interval (dogs.uncertainty: the interval in which the summary counts a tie with the
best). A score inside the interval, a worse one or a non-finite one does not beat it. A trial ASHA (or a budget)
stopped before the epoch at which the best reached its best score was not given a fair chance: it counts neither
way (the count neither grows nor restarts), though it may still become the best. A trial may become the best
without beating the old best's interval; the count still goes on. No search stops before as many trials finished as
the sampler's random start-up trials (tune.study_searcher.startup_trials; Optuna Terminator's min_n_trials): before then
the sampler has not modelled anything, so "flat" says nothing yet. After that, the scores this validation set can
tell apart have stopped moving, so the search stops and says why in one line.

Optuna's Terminator asks the same question (optuna.terminator.Terminator: stop once the improvement still possible
is below the evaluation's own error; Makarova et al. 2022, "Automatic Termination for Hyperparameter Optimization";
its BestValueStagnationEvaluator counts trials since the best last improved). Here the error is the project's own
interval and the bound is a count of trials. Ray Tune ends the experiment through its Stopper API (stop_all), so
finished trials stay finished, and --resume reruns none of them. A resumed search replays the rule over its
finished trials in the order they finished, and a flat one stops again at once (tune.search.finish says so).
"""
import contextlib
import os
import signal
import threading
import time
from typing import NamedTuple

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from dogs import ranking, trainable, uncertainty
from dogs.errors import USER_ERROR_KEY, UserError
from tune import experiment, storage
from tune.callbacks import CSVLogger, JsonLogger, KeepBestAndLatest, TensorBoardCallback, restoring
from tune.experiment import study_numbers, trial_name
from tune.progress import ProgressCallback, epoch_of
from tune.settings import asha_rungs
from tune.spaces import searched_names
from tune.study_searcher import StudySearcher, startup_trials


class UserErrorStop(tune.Stopper):
    """Ends the search once its first `first` trials all failed with a user error before their first epoch (each
    reports it as its one result: dogs.ray_trainable) and no trial ran an epoch: every further trial would fail too."""

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
    experiments made before tune.experiment (their pickles name this function)."""
    return f"trial_{trial.trial_id}"


def make_tuner(space, runs, name, optuna_storage=None, verbose=False, slots=None, rung_slots=1, loggers=(), extend=0,
               session=None, warm_trials=()):
    """Tuner: the Optuna study's searcher, ASHA (or FIFO) scheduler, bounded checkpoints, retries, TensorBoard,
    and the trackers' callbacks (`loggers`: tune.trackers). `extend`: that many more trials in an existing
    experiment folder, asked of its study (--resume --samples N). `session`: what the searcher and the retention
    callback tell the driver (tune.callbacks). `warm_trials`: finished study trials of an old search added to the
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
    flat = FlatWatch(space["search"], storage.join(runs, name)) if s.get("stop_when_flat") else None
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
            trial_name_creator=experiment.named, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=runs, verbose=1 if verbose else 0,   # 0: our progress line only
            stop=tune.stopper.CombinedStopper(stop, FlatStop(flat)) if flat else stop,
            # Ray deletes no checkpoint (num_to_keep would save the whole experiment state after every
            # checkpoint: O(N) per checkpoint); KeepBestAndLatest keeps each trial's best and latest
            checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=s["metric"],
                                                    checkpoint_score_order=s["mode"]),
            failure_config=tune.FailureConfig(max_failures=s["max_failures"]),
            callbacks=[JsonLogger(), CSVLogger(),   # whole across a trial's retries (tune.callbacks)
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
    """Which running trials are out of budget (their last result's budget_spent, dogs.ray_trainable: they start no more
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
    as on Ctrl-C, once every running trial is at an epoch boundary it will not pass (dogs.ray_trainable starts no epoch
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


class Finished(NamedTuple):
    """A finished trial as the rule sees it."""
    name: str               # trial id
    score: float            # best_<metric>
    bounds: tuple | None    # its best epoch's 95% interval (None: an old trial that reported no validation size)
    ran: int = 0            # epochs it ran
    best_at: int = 0        # the epoch at which it first reached its best score
    complete: bool = True   # it ran all its epochs


def flat_min_trials(search):
    """Trials that must finish before a flat search may stop: the sampler's random start-up trials (TPE, GP), none
    for samplers that never model (random, qmc)."""
    return startup_trials(search["samples"]) if search["sampler"] in ("tpe", "gp") else 0


def beats_interval(score, best_score, bounds, mode):
    """Whether `score` beats the best: lies beyond the better end of its interval `bounds` (low, high), or beyond the
    best score itself when it has no interval (an old trial that reported no validation size). Anything finite beats
    no best yet."""
    if not ranking.finite(score):
        return False
    if not ranking.finite(best_score):
        return True
    edge = best_score if bounds is None else bounds[1] if mode == "max" else bounds[0]
    return ranking.key(score, mode) > ranking.key(edge, mode)


def fair_trial(trial, best):
    """Whether `trial` had a fair chance against `best`: it ran all its epochs, or as many as the best took to reach
    its best score (any trial is fair against no best yet)."""
    return best is None or trial.complete or trial.ran >= best.best_at


def streak_after(count, best, trial, mode):
    """(count, best) once one more `trial` (Finished) finished: the count of fairly tried trials in a row that did
    not beat the best (0 when this one did; unchanged when this one was not fairly tried) and the best trial
    (ranking.best's: of equal scores, the first by name, as the console and the summary pick it by trial id)."""
    if fair_trial(trial, best):
        count = 0 if beats_interval(trial.score, best and best.score, best and best.bounds, mode) else count + 1
    contenders = sorted([trial] if best is None else [best, trial], key=lambda t: t.name)
    return count, ranking.best(contenders, lambda t: t.score, mode) or best


def flat_streaks(finished, mode):
    """After each trial of `finished` (Finished per trial, in the order they finished): (how many fairly tried
    trials in a row have not beaten the best since the last one that did, the best trial then or None)."""
    count, best = 0, None
    for trial in finished:
        count, best = streak_after(count, best, trial, mode)
        yield count, best


def flat_verdict(finished, mode, trials_in_a_row, at_least=0):
    """(M, the best trial then) at the first trial after which `trials_in_a_row` fairly tried trials in a row had
    not beaten the best and `at_least` trials had finished (min_trials), or None when that never happened."""
    return next(((count, best) for done, (count, best) in enumerate(flat_streaks(finished, mode), 1)
                 if count >= trials_in_a_row and done >= at_least), None)


def epochs_phrase(n):
    return f"{n} epoch" + ("" if n == 1 else "s")


def flat_words(count, best, best_name):
    """The one line a flat search stops with (console and summary); `best`: the best Finished, or None."""
    if best is None:
        return f"{count} trials in a row could not set a finite score"
    return (f"{count} trials in a row that ran the {epochs_phrase(best.best_at)} {best_name} took to its best (or all theirs) "
            f"could not beat its interval")


def stop_line(count, best, best_name, m, at_least):
    """The console's line at the stop: the rule, in one sentence."""
    return (f"stopped: {flat_words(count, best, best_name)} (search.stop_when_flat {m}: trials stopped sooner count "
            f"neither way; no stop before {at_least} trials finished); the running trials stop now")


def trial_outcome(trial_id, metric, result, bounds=None, planned=None):
    """Finished of a trial from its last result; `bounds`: the interval its best epoch reported, when known (a
    macro-F1 interval is in that epoch's result only); `planned`: the epochs it was to run (its config's)."""
    score = result.get(f"best_{metric}")
    if bounds is None:
        bounds = uncertainty.interval(metric, score, result)
    ran = int(epoch_of(result))
    best_at = int(result.get("best_epoch") or ran)   # dogs.ray_trainable's best epoch (the later of equal ones)
    return Finished(trial_id, score, bounds, ran, best_at, planned is None or ran >= planned)


def finished_at(result):
    """When a trial finished: its last result's report time (dogs.ray_trainable's reported_at; Ray's whole-second timestamp
    in results made before it)."""
    return result.get("reported_at") or result.get("timestamp") or 0


def finished_in_order(trials, metric):
    """[Finished] of the experiment's finished trials (tune.experiment.Trial), in the order they finished."""
    done = [t for t in trials if t.status == "TERMINATED" and t.results and USER_ERROR_KEY not in t.last]
    done.sort(key=lambda t: finished_at(t.last))
    return [trial_outcome(t.trial_id, metric, t.last, best_epoch_interval(metric, t.results), t.config.get("epochs"))
            for t in done]


def best_epoch_interval(metric, results):
    """The interval of the epoch that is the trial's best_<metric> (the last of equal ones), or None."""
    best = [r for r in results if r.get(metric) is not None and r.get(metric) == r.get(f"best_{metric}")]
    return uncertainty.interval(metric, best[-1][metric], best[-1]) if best else None


def flat_reason(search, trials, exp_dir=None):
    """The one line of why an experiment stopped flat when its finished trials (tune.experiment.Trial) reached
    search.stop_when_flat in a row (the rule replayed from the files), else None (off, or never flat)."""
    if not search.get("stop_when_flat"):
        return None
    found = flat_verdict(finished_in_order(trials, search["metric"]), search["mode"], search["stop_when_flat"],
                    flat_min_trials(search))
    if found is None:
        return None
    count, best = found
    numbers = study_numbers(exp_dir) if exp_dir else {}
    return flat_words(count, best, best and trial_name(best.name, numbers.get(best.name)))


class FlatWatch(tune.Callback):
    """Records each trial as it finishes (its score, interval and epochs) and prints the one line when M fairly
    tried trials in a row could not beat the best, once `at_least` trials finished; FlatStop asks it. A resumed
    search starts from the trials finished before (in the order they finished)."""

    def __init__(self, search, exp_dir=None, out=print):
        """`search`: the space's search settings (its metric, mode, stop_when_flat M, sampler and samples)."""
        self.metric, self.mode, self.m = search["metric"], search["mode"], search["stop_when_flat"]
        self.at_least = flat_min_trials(search)   # the sampler's start-up trials
        self.exp_dir, self.out = exp_dir, out
        self.reset_records()

    def reset_records(self):
        """Nothing recorded yet (a restored search replays its finished trials)."""
        self.finished, self.bounds, self.stopped, self.seeded = set(), {}, None, False
        self.count, self.best = 0, None   # fairly tried trials in a row that did not beat the best; the best Finished

    def on_step_begin(self, iteration, trials, **info):
        if not self.seeded:   # a restored tuner: its finished trials, as the first finished them
            self.seeded = True
            done = sorted((t for t in trials if t.status == "TERMINATED" and t.last_result),
                          key=lambda t: finished_at(t.last_result))
            for trial in done:
                self._finished(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is not None and value == result.get(f"best_{self.metric}"):   # its best epoch so far
            self.bounds[trial.trial_id] = uncertainty.interval(self.metric, value, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trial)

    def _finished(self, trial):
        result = trial.last_result or {}
        if USER_ERROR_KEY in result or trial.trial_id in self.finished or self.stopped:
            return
        self.finished.add(trial.trial_id)
        outcome = trial_outcome(trial.trial_id, self.metric, result, self.bounds.get(trial.trial_id),
                                trial.config.get("epochs"))
        self.count, self.best = streak_after(self.count, self.best, outcome, self.mode)
        if self.count >= self.m and len(self.finished) >= self.at_least:
            numbers = study_numbers(self.exp_dir) if self.exp_dir else {}
            name = self.best and trial_name(self.best.name, numbers.get(self.best.name))
            self.stopped = flat_words(self.count, self.best, name)
            self.out(stop_line(self.count, self.best, name, self.m, self.at_least), flush=True)

    def __getstate__(self):   # tuner.pkl: no printer, nothing recorded (a restored search replays its trials)
        return {"metric": self.metric, "mode": self.mode, "m": self.m, "exp_dir": self.exp_dir,
                "at_least": self.at_least}

    def __setstate__(self, state):
        self.__dict__.update({"at_least": 0, **state, "out": print})
        self.reset_records()


class FlatStop(tune.Stopper):
    """Ray Tune's Stopper: stop_all once the FlatWatch saw M fairly tried trials in a row not beat the best."""

    def __init__(self, watch):
        self.watch = watch

    def __call__(self, trial_id, result):
        return False   # no single trial is stopped by this rule

    def stop_all(self):
        return self.watch.stopped is not None
