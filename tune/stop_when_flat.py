"""search.stop_when_flat: M. The search ends once M finished trials in a row could not beat the best's interval.

A finished trial (it ran its epochs, or ASHA stopped it) beats the best when its score lies beyond the better end of
the best finished trial's 95% interval (dogs.uncertainty: the interval in which the summary counts a tie with the
best). A score inside the interval, a worse one or a non-finite one does not beat it. After M such trials in a row,
the scores this validation set can tell apart have stopped moving, so the search stops and says why in one line.
A trial may become the best without beating the old best's interval; the count still goes on.

Optuna's Terminator asks the same question (optuna.terminator.Terminator: stop once the improvement still possible
is below the evaluation's own error; Makarova et al. 2022, "Automatic Termination for Hyperparameter Optimization";
its BestValueStagnationEvaluator counts trials since the best last improved). Here the error is the project's own
interval and the bound is a count of trials. Ray Tune ends the experiment through its Stopper API (stop_all), so
finished trials stay finished, and --resume reruns none of them. A resumed search replays the rule over its
finished trials in the order they finished, and a flat one stops again at once (tune.search.finish says so).
"""
from ray import tune

from dogs import ranking, uncertainty
from dogs.errors import USER_ERROR_KEY
from tune.progress import study_numbers, trial_name


def beats(score, best_score, bounds, mode):
    """Whether `score` beats the best: lies beyond the better end of its interval `bounds` (low, high), or beyond the
    best score itself when it has no interval (an old trial that reported no validation size). Anything finite beats
    no best yet."""
    if not ranking.finite(score):
        return False
    if not ranking.finite(best_score):
        return True
    edge = best_score if bounds is None else bounds[1] if mode == "max" else bounds[0]
    return ranking.key(score, mode) > ranking.key(edge, mode)


def after(count, best, trial, mode):
    """(count, best) once one more `trial` finished, each a (name, score, interval or None): the count of trials in
    a row that did not beat the best (0 when this one did) and the best trial (ranking.best's: of equal scores, the
    first by name, as the console and the summary pick it by trial id)."""
    _, best_score, best_bounds = best or (None, None, None)
    count = 0 if beats(trial[1], best_score, best_bounds, mode) else count + 1
    contenders = sorted([trial] if best is None else [best, trial], key=lambda t: t[0])
    return count, ranking.best(contenders, lambda t: t[1], mode) or best


def streaks(finished, mode):
    """After each trial of `finished` ((name, score, interval or None) per trial, in the order they finished): (how
    many trials in a row have not beaten the best since the last one that did, the best trial then or None)."""
    count, best = 0, None
    for trial in finished:
        count, best = after(count, best, trial, mode)
        yield count, best


def verdict(finished, mode, trials_in_a_row):
    """(M, the best trial then) at the first trial after which `trials_in_a_row` finished trials in a row had not
    beaten the best, or None when that never happened."""
    return next(((count, best) for count, best in streaks(finished, mode) if count >= trials_in_a_row), None)


def reason(count, best_name):
    """The one line a flat search stops with (console and summary)."""
    return f"{count} trials in a row could not beat {best_name}'s interval"


def trial_outcome(trial_id, metric, result, bounds=None):
    """(trial id, best_<metric>, its interval) of a finished trial from its last result; `bounds`: the interval its
    best epoch reported, when known (a macro-F1 interval is in that epoch's result only)."""
    score = result.get(f"best_{metric}")
    if bounds is None:
        bounds = uncertainty.interval(metric, score, result)
    return trial_id, score, bounds


def finished_at(result):
    """When a trial finished: its last result's report time (dogs.trial's reported_at; Ray's whole-second timestamp
    in results made before it)."""
    return result.get("reported_at") or result.get("timestamp") or 0


def finished_in_order(trials, metric):
    """[(trial id, score, interval)] of the experiment's finished trials (tune.experiment.Trial), in the order they
    finished."""
    done = [t for t in trials if t.status == "TERMINATED" and t.results and USER_ERROR_KEY not in t.last]
    done.sort(key=lambda t: finished_at(t.last))
    return [trial_outcome(t.trial_id, metric, t.last, best_epoch_interval(metric, t.results)) for t in done]


def best_epoch_interval(metric, results):
    """The interval of the epoch that is the trial's best_<metric> (the last of equal ones), or None."""
    best = [r for r in results if r.get(metric) is not None and r.get(metric) == r.get(f"best_{metric}")]
    return uncertainty.interval(metric, best[-1][metric], best[-1]) if best else None


def flat_reason(search, trials, exp_dir=None):
    """The one line of why an experiment stopped flat when its finished trials (tune.experiment.Trial) reached
    search.stop_when_flat in a row (the rule replayed from the files), else None (off, or never flat)."""
    if not search.get("stop_when_flat"):
        return None
    found = verdict(finished_in_order(trials, search["metric"]), search["mode"], search["stop_when_flat"])
    if found is None:
        return None
    count, best = found
    numbers = study_numbers(exp_dir) if exp_dir else {}
    return reason(count, "any trial" if best is None else trial_name(best[0], numbers))


class FlatWatch(tune.Callback):
    """Records each trial as it finishes (its score and interval) and prints the one line when M in a row could not
    beat the best; FlatStop asks it. A resumed search starts from the trials finished before (in the order they
    finished)."""

    def __init__(self, metric, mode, trials_in_a_row, exp_dir=None, out=print):
        self.metric, self.mode, self.m, self.exp_dir, self.out = metric, mode, trials_in_a_row, exp_dir, out
        self.finished, self.bounds, self.stopped, self.seeded = set(), {}, None, False
        self.count, self.best = 0, None   # trials in a row that did not beat the best; the best (id, score, interval)

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
        self.count, self.best = after(self.count, self.best, trial_outcome(trial.trial_id, self.metric, result,
                                                                           self.bounds.get(trial.trial_id)), self.mode)
        if self.count >= self.m:
            name = trial_name(self.best[0], study_numbers(self.exp_dir) if self.exp_dir else {}) if self.best else \
                "any trial"
            self.stopped = reason(self.count, name)
            self.out(f"stopped: {self.stopped} (search.stop_when_flat {self.m}); the running trials stop now",
                     flush=True)

    def __getstate__(self):   # tuner.pkl: no printer, nothing recorded (a restored search replays its trials)
        return {"metric": self.metric, "mode": self.mode, "m": self.m, "exp_dir": self.exp_dir}

    def __setstate__(self, state):
        self.__init__(state["metric"], state["mode"], state["m"], state["exp_dir"])


class FlatStop(tune.Stopper):
    """Ray Tune's Stopper: stop_all once the FlatWatch saw M finished trials in a row not beat the best."""

    def __init__(self, watch):
        self.watch = watch

    def __call__(self, trial_id, result):
        return False   # no single trial is stopped by this rule

    def stop_all(self):
        return self.watch.stopped is not None
