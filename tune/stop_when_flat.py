"""search.stop_when_flat: M. The search ends once M fairly tried trials in a row could not beat the best's interval.

The rule in one sentence: after the sampler's start-up trials have finished, the search stops once M finished trials
in a row, each of which ran as many epochs as the best trial took to reach its best score (or all its epochs), scored
no better than the better end of the best's 95% interval.

A finished trial (it ran its epochs, or ASHA stopped it) beats the best when its score lies beyond the better end of
the best finished trial's 95% interval (dogs.uncertainty: the interval in which the summary counts a tie with the
best). A score inside the interval, a worse one or a non-finite one does not beat it. A trial ASHA (or a budget)
stopped before the epoch at which the best reached its best score was not given a fair chance: it counts neither
way (the count neither grows nor restarts), though it may still become the best. A trial may become the best
without beating the old best's interval; the count still goes on. No search stops before as many trials finished as
the sampler's random start-up trials (tune.searcher.startup_trials; Optuna Terminator's min_n_trials): before then
the sampler has not modelled anything, so "flat" says nothing yet. After that, the scores this validation set can
tell apart have stopped moving, so the search stops and says why in one line.

Optuna's Terminator asks the same question (optuna.terminator.Terminator: stop once the improvement still possible
is below the evaluation's own error; Makarova et al. 2022, "Automatic Termination for Hyperparameter Optimization";
its BestValueStagnationEvaluator counts trials since the best last improved). Here the error is the project's own
interval and the bound is a count of trials. Ray Tune ends the experiment through its Stopper API (stop_all), so
finished trials stay finished, and --resume reruns none of them. A resumed search replays the rule over its
finished trials in the order they finished, and a flat one stops again at once (tune.search.finish says so).
"""
from typing import NamedTuple

from ray import tune

from dogs import ranking, uncertainty
from dogs.errors import USER_ERROR_KEY
from tune.names import study_numbers, trial_name
from tune.progress import epoch_of
from tune.searcher import startup_trials


class Finished(NamedTuple):
    """A finished trial as the rule sees it."""
    name: str               # trial id
    score: float            # best_<metric>
    bounds: tuple | None    # its best epoch's 95% interval (None: an old trial that reported no validation size)
    ran: int = 0            # epochs it ran
    best_at: int = 0        # the epoch at which it first reached its best score
    complete: bool = True   # it ran all its epochs


def min_trials(search):
    """Trials that must finish before a flat search may stop: the sampler's random start-up trials (TPE, GP), none
    for samplers that never model (random, qmc)."""
    return startup_trials(search["samples"]) if search["sampler"] in ("tpe", "gp") else 0


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


def fair(trial, best):
    """Whether `trial` had a fair chance against `best`: it ran all its epochs, or as many as the best took to reach
    its best score (any trial is fair against no best yet)."""
    return best is None or trial.complete or trial.ran >= best.best_at


def after(count, best, trial, mode):
    """(count, best) once one more `trial` (Finished) finished: the count of fairly tried trials in a row that did
    not beat the best (0 when this one did; unchanged when this one was not fairly tried) and the best trial
    (ranking.best's: of equal scores, the first by name, as the console and the summary pick it by trial id)."""
    if fair(trial, best):
        count = 0 if beats(trial.score, best and best.score, best and best.bounds, mode) else count + 1
    contenders = sorted([trial] if best is None else [best, trial], key=lambda t: t.name)
    return count, ranking.best(contenders, lambda t: t.score, mode) or best


def streaks(finished, mode):
    """After each trial of `finished` (Finished per trial, in the order they finished): (how many fairly tried
    trials in a row have not beaten the best since the last one that did, the best trial then or None)."""
    count, best = 0, None
    for trial in finished:
        count, best = after(count, best, trial, mode)
        yield count, best


def verdict(finished, mode, trials_in_a_row, at_least=0):
    """(M, the best trial then) at the first trial after which `trials_in_a_row` fairly tried trials in a row had
    not beaten the best and `at_least` trials had finished (min_trials), or None when that never happened."""
    return next(((count, best) for done, (count, best) in enumerate(streaks(finished, mode), 1)
                 if count >= trials_in_a_row and done >= at_least), None)


def epochs(n):
    return f"{n} epoch" + ("" if n == 1 else "s")


def reason(count, best, best_name):
    """The one line a flat search stops with (console and summary); `best`: the best Finished, or None."""
    if best is None:
        return f"{count} trials in a row could not set a finite score"
    return (f"{count} trials in a row that ran the {epochs(best.best_at)} {best_name} took to its best (or all theirs) "
            f"could not beat its interval")


def stop_line(count, best, best_name, m, at_least):
    """The console's line at the stop: the rule, in one sentence."""
    return (f"stopped: {reason(count, best, best_name)} (search.stop_when_flat {m}: trials stopped sooner count "
            f"neither way; no stop before {at_least} trials finished); the running trials stop now")


def trial_outcome(trial_id, metric, result, bounds=None, planned=None):
    """Finished of a trial from its last result; `bounds`: the interval its best epoch reported, when known (a
    macro-F1 interval is in that epoch's result only); `planned`: the epochs it was to run (its config's)."""
    score = result.get(f"best_{metric}")
    if bounds is None:
        bounds = uncertainty.interval(metric, score, result)
    ran = int(epoch_of(result))
    best_at = int(result.get("best_epoch") or ran)   # dogs.trial's best epoch (the later of equal ones)
    return Finished(trial_id, score, bounds, ran, best_at, planned is None or ran >= planned)


def finished_at(result):
    """When a trial finished: its last result's report time (dogs.trial's reported_at; Ray's whole-second timestamp
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
    found = verdict(finished_in_order(trials, search["metric"]), search["mode"], search["stop_when_flat"],
                    min_trials(search))
    if found is None:
        return None
    count, best = found
    numbers = study_numbers(exp_dir) if exp_dir else {}
    return reason(count, best, best and trial_name(best.name, numbers.get(best.name)))


class FlatWatch(tune.Callback):
    """Records each trial as it finishes (its score, interval and epochs) and prints the one line when M fairly
    tried trials in a row could not beat the best, once `at_least` trials finished; FlatStop asks it. A resumed
    search starts from the trials finished before (in the order they finished)."""

    def __init__(self, metric, mode, trials_in_a_row, exp_dir=None, out=print, at_least=0):
        self.metric, self.mode, self.m, self.exp_dir, self.out = metric, mode, trials_in_a_row, exp_dir, out
        self.at_least = at_least   # min_trials: the sampler's start-up trials
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
        self.count, self.best = after(self.count, self.best, outcome, self.mode)
        if self.count >= self.m and len(self.finished) >= self.at_least:
            numbers = study_numbers(self.exp_dir) if self.exp_dir else {}
            name = self.best and trial_name(self.best.name, numbers.get(self.best.name))
            self.stopped = reason(self.count, self.best, name)
            self.out(stop_line(self.count, self.best, name, self.m, self.at_least), flush=True)

    def __getstate__(self):   # tuner.pkl: no printer, nothing recorded (a restored search replays its trials)
        return {"metric": self.metric, "mode": self.mode, "m": self.m, "exp_dir": self.exp_dir,
                "at_least": self.at_least}

    def __setstate__(self, state):
        self.__init__(state["metric"], state["mode"], state["m"], state["exp_dir"], at_least=state.get("at_least", 0))


class FlatStop(tune.Stopper):
    """Ray Tune's Stopper: stop_all once the FlatWatch saw M fairly tried trials in a row not beat the best."""

    def __init__(self, watch):
        self.watch = watch

    def __call__(self, trial_id, result):
        return False   # no single trial is stopped by this rule

    def stop_all(self):
        return self.watch.stopped is not None
