"""The console of a search, instead of Ray's config box per trial and a log line per checkpoint (tune.search -v
brings Ray's full output back): one line per finished trial, and a progress line now and then.

    #3 ef4ab16e  stopped at epoch 2  best_val_acc 0.4100  lr=0.0003 head_width=32
    [  2m05s] 14/30 trials: 9 done (5 stopped early, 0 errored), 2 running | epochs 41/90 | running 1d2c3b4a e2 0.61, ab12cd34 e1 0.33 | best best_val_acc 0.8736 [0.81, 0.92] (#6 d19fa2df) | ~3m10s left

[0.81, 0.92]: the best score's 95% interval (dogs.uncertainty). A trial's name is its Optuna trial number and its
Tune id (`#3 ef4ab16e`), a re-evaluation run's its rank and seed (`rank1-seed2`): tune.experiment, as everywhere.
The progress line is printed at the search's first epoch, when a trial ends, and at most every `every_s` seconds
otherwise. "epochs 41/90": epochs run / at most planned (samples x epochs; ASHA stops some trials sooner). The
time left is an estimate, from the first epoch on: the epochs still to run (trials not started x the mean epochs
of finished trials, or the whole epochs before any finished, plus what running ones have left of that) at the
rate epochs have run in this session, and never more than the time budget has left (time_left).

How long a search will take, said before it starts: its epochs at the seconds per epoch this machine measured in
an earlier search of the same space and data (kept in the cache folder, `epoch-times.json`), at most its time budget.

    Searching 6 trials x 40 epochs, 2 at a time; results in runs/x: about 1h20m (240 epochs at most) at 40.0 s per
    trial-epoch (measured here on 2026-12-06 in a search of this space and data); the time budget 10m ends it sooner

Without a measurement yet the line says so, and the progress line estimates from the first epoch (tune.progress).
"""
import hashlib
import json
import time
from datetime import date

from ray import tune

from dogs import ranking, uncertainty
from dogs.cache import cache_root
from dogs.errors import USER_ERROR_KEY
from dogs.files import atomic_path
from tune import experiment, old_pickles


STEP = "training_iteration"


def epoch_of(result):
    """The epoch a result reports (a re-evaluation's run continued from a checkpoint counts on from it), else Tune's
    count of its results."""
    return result.get("epoch", result.get(STEP, 0))


def duration(seconds):
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def short(value):
    """A searched value, short: 4 significant digits for floats (3e-4 as 0.0003)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def time_left(work_s, budget_left_s=None):
    """Seconds a search has left: the work left at the measured rate, at most the budget left (None: no budget)."""
    return work_s if budget_left_s is None else max(0.0, min(work_s, budget_left_s))


study_numbers = experiment.study_numbers   # {Tune trial id: Optuna trial number}, {} when the study cannot be read


class ProgressCallback(tune.Callback):
    """Prints a line per finished trial and a progress line now and then (see the module docstring)."""

    deadline = None   # the time budget's end (Unix seconds) in this session: set by tune.ray_tuner.time_budget
    by_run = False    # True: trials are named by Tune's trial name (a re-evaluation's rank1-seed2), not the study

    def __init__(self, samples, epochs, metric, mode, every_s=30.0, out=print, searched=(), exp_dir=None,
                 by_run=False):
        self.samples, self.epochs, self.score, self.mode = samples, epochs, f"best_{metric}", mode
        self.by_run = by_run
        self.every_s, self.out, self.searched, self.exp_dir = every_s, out, list(searched), exp_dir
        self._start = self._last = None
        self._ran = 0   # epochs reported in this session

    def on_step_begin(self, iteration, trials, **info):
        if self._start is None:
            self._start = self._last = time.monotonic()

    def on_step_end(self, iteration, trials, **info):
        if self._start is not None and time.monotonic() - self._last >= self.every_s:
            self._print(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._ran += 1
        if self._ran == 1:   # the first epoch: epochs per second known, so the time left
            self._print(trials, now={trial.trial_id: result})

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trials, trial, "ERROR" if USER_ERROR_KEY in (trial.last_result or {}) else "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trials, trial, "ERROR")

    def name(self, trial, numbers=None):
        """The trial's one name (tune.experiment): `#3 ef4ab16e`, or a re-evaluation run's `rank1-seed2`."""
        return str(trial) if self.by_run else experiment.trial_name(trial.trial_id, (numbers or {}).get(trial.trial_id))

    def trial_line(self, trial, status, numbers):
        """`#3 ef4ab16e  stopped at epoch 2  best_val_acc 0.4100  lr=0.0003 head_width=32`."""
        result = trial.last_result or {}
        epoch = epoch_of(result)
        if USER_ERROR_KEY in result:   # its one line, once (dogs.ray_trainable: not retried)
            return f"{self.name(trial, numbers)}  failed, not retried: {result[USER_ERROR_KEY]}"
        ended = (f"errored at epoch {epoch + 1}" if status == "ERROR" else
                 f"stopped at epoch {epoch}" if epoch < self.epochs else f"completed {epoch} epochs")
        score = result.get(self.score)
        values = " ".join(f"{name}={short(trial.config[name])}" for name in self.searched if name in trial.config)
        return "  ".join(part for part in (self.name(trial, numbers), ended,
                                           f"{self.score} {score:.4f}" if score is not None else "", values) if part)

    def line(self, trials, elapsed, ended=None, numbers=None, now=None):
        """The progress line; `ended`: {trial id: status} of trials ending now, `now`: {trial id: result} of a
        result coming in now (Tune calls back before it sets them)."""
        results = {t.trial_id: (now or {}).get(t.trial_id, t.last_result) or {} for t in trials}
        status = {t.trial_id: (ended or {}).get(t.trial_id, "ERROR" if USER_ERROR_KEY in results[t.trial_id]
                                                else t.status) for t in trials}
        done = [t for t in trials if status[t.trial_id] in ("TERMINATED", "ERROR")]
        errored = sum(s == "ERROR" for s in status.values())
        stopped = sum(status[t.trial_id] == "TERMINATED"
                      and epoch_of(results[t.trial_id] or {"epoch": self.epochs}) < self.epochs for t in trials)
        running = [t for t in trials if status[t.trial_id] == "RUNNING"]
        ran = sum(results[t.trial_id].get(STEP, 0) for t in trials if USER_ERROR_KEY not in results[t.trial_id])
        text = (f"[{duration(elapsed):>7}] {len(done)}/{self.samples} trials: {len(done)} done ({stopped} stopped "
                f"early, {errored} errored), {len(running)} running | epochs {ran}/{self.samples * self.epochs}")
        scores = [f"{self.name(t, numbers)} e{epoch_of(results[t.trial_id])} {results[t.trial_id][self.score]:.4f}"
                  for t in running if results[t.trial_id].get(self.score) is not None]
        if scores:
            text += " | running " + ", ".join(scores)
        # of equal scores the first trial by id, as the summary and tune.best (dogs.ranking)
        best = ranking.best(sorted(trials, key=lambda t: t.trial_id), lambda t: results[t.trial_id].get(self.score),
                            self.mode)
        if best is not None:   # with the 95% interval of its score (dogs.uncertainty)
            value = results[best.trial_id][self.score]
            bounds = uncertainty.interval(self.score.removeprefix("best_"), value, results[best.trial_id])
            text += f" | best {self.score} {value:.4f}" + (f" [{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else "") \
                + f" ({self.name(best, numbers)})"
        if self._ran and elapsed > 0:
            finished = [t for t in done if results[t.trial_id]]
            mean = (sum(results[t.trial_id].get(STEP, 0) for t in finished) / len(finished) if finished
                    else self.epochs)
            left = (max(0, self.samples - len(done) - len(running)) * mean
                    + sum(max(0.0, mean - results[t.trial_id].get(STEP, 0)) for t in running))
            budget_left = self.deadline - time.time() if self.deadline else None
            text += f" | ~{duration(time_left(left * elapsed / self._ran, budget_left))} left"
        return text

    def _ended(self, trials, trial, status):
        numbers = study_numbers(self.exp_dir) if self.exp_dir else {}
        self.out(self.trial_line(trial, status, numbers), flush=True)
        self._print(trials, ended={trial.trial_id: status}, numbers=numbers)

    def _print(self, trials, ended=None, numbers=None, now=None):
        self._last = time.monotonic()
        self.out(self.line(trials, self._last - (self._start or self._last), ended, numbers, now), flush=True)

    __setstate__ = old_pickles.progress_state   # a callback pickled before the trial lines (tune/old_pickles.py)

    def __getstate__(self):
        # tuner.pkl: no clock; the printer is print
        return {"samples": self.samples, "epochs": self.epochs, "score": self.score, "mode": self.mode,
                "every_s": self.every_s, "out": print, "searched": self.searched, "exp_dir": self.exp_dir,
                "by_run": self.by_run,
                "_start": None, "_last": None, "_ran": 0}


FILENAME = "epoch-times.json"


def space_key(space):
    """What sets an epoch's length: the params (data, model, sizes, ranges) and each trial's CPUs and GPUs."""
    s = space["search"]
    what = {"params": space["params"], "cpus": s["cpus_per_trial"], "gpus": s["gpus_per_trial"],
            "holdout": s["holdout"]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def search_seconds(samples, epochs, slots, epoch_s, budget_s=None):
    """The most a search takes: every trial's every epoch, `slots` at a time, at most the budget (ASHA may stop
    trials sooner)."""
    return time_left(samples * epochs * epoch_s / max(1, slots), budget_s)


def measured(space):
    """{"epoch_s", "on"} of an earlier search of this space and data here, or None."""
    try:
        return json.loads((cache_root() / FILENAME).read_text()).get(space_key(space))
    except (OSError, ValueError, AttributeError):   # none yet, or unreadable: no measurement
        return None


def record(space, table):
    """Keep this search's seconds per trial-epoch (its trials' own time over their epochs) for the next plan line;
    nothing when no epoch ran or the cache folder cannot be written (the next plan says it has no measurement)."""
    epochs = table.epochs.fillna(0).sum() if len(table) else 0
    if not epochs:
        return
    path = cache_root() / FILENAME
    try:
        times = json.loads(path.read_text()) if path.exists() else {}
        times[space_key(space)] = {"epoch_s": float(table.time_s.fillna(0).sum() / epochs), "on": str(date.today())}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(times, indent=1, sort_keys=True))
    except (OSError, ValueError, AttributeError):   # the estimate is a courtesy: the search's results are saved
        pass


def plan_line(space, slots, exp_dir, budget_s=None):
    """The one line said before a search starts: what it runs, where, and about how long."""
    s = space["search"]
    text = f"Searching {s['samples']} trials x {s['epochs']} epochs, {slots} at a time; results in {exp_dir}: "
    return text + about(space, s["samples"] * s["epochs"], slots, budget_s, s["time_budget"])


def about(space, epochs, slots, budget_s=None, budget=None):
    """How long `epochs` trial-epochs of this space and data take here, `slots` at a time, at most the time budget
    (`budget_s` seconds, said as `budget`); or that there is no measurement yet. The plan lines of a search and of a
    re-evaluation (tune.reevaluate) end with it."""
    seen = measured(space)
    if not seen:
        text = ("no measurement yet of this space and data on this machine (the progress line estimates from the "
                "first epoch)")
        return text + (f"; at most the time budget {budget} and an epoch" if budget_s else "")
    total = epochs * seen["epoch_s"] / max(1, slots)
    text = (f"about {duration(time_left(total, budget_s))} ({epochs} epochs at most) at {seen['epoch_s']:.1f} s per "
            f"trial-epoch (measured here on {seen['on']} in a search of this space and data)")
    return text + (f"; the time budget {budget} ends it sooner" if budget_s and budget_s < total else "")
