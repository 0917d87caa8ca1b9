"""A compact live progress line for the console, instead of Ray's config box per trial and a log line per
checkpoint (tune.search -v brings Ray's full output back):

    [  2m05s] 14/30 trials: 9 done (5 stopped early, 0 errored), 2 running | best best_val_acc 0.8736 [0.81, 0.92] (d19fa2df) | ~3m10s left

[0.81, 0.92]: the best score's 95% interval (dogs.uncertainty). Printed when a trial ends, and at most every
`every_s` seconds otherwise. The time left is an estimate: the epochs still to run (trials not started x the mean epochs of finished trials, plus what running ones have
left of that mean) at the rate epochs have run so far.
"""
import time

from ray import tune

from dogs import ranking, uncertainty

STEP = "training_iteration"


def duration(seconds):
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressCallback(tune.Callback):
    """Prints one progress line now and then (see the module docstring)."""

    def __init__(self, samples, epochs, metric, mode, every_s=30.0, out=print):
        self.samples, self.epochs, self.score, self.mode = samples, epochs, f"best_{metric}", mode
        self.every_s, self.out = every_s, out
        self._start = self._last = None

    def on_step_begin(self, iteration, trials, **info):
        if self._start is None:
            self._start = self._last = time.monotonic()

    def on_step_end(self, iteration, trials, **info):
        if self._start is not None and time.monotonic() - self._last >= self.every_s:
            self._print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials, ended={trial.trial_id: "TERMINATED"})

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials, ended={trial.trial_id: "ERROR"})

    def line(self, trials, elapsed, ended=None):
        """The progress line; `ended`: {trial id: status} of trials ending now (Tune calls back before it sets it)."""
        status = {t.trial_id: (ended or {}).get(t.trial_id, t.status) for t in trials}
        done = [t for t in trials if status[t.trial_id] in ("TERMINATED", "ERROR")]
        errored = sum(s == "ERROR" for s in status.values())
        stopped = sum(status[t.trial_id] == "TERMINATED" and (t.last_result or {}).get(STEP, self.epochs) < self.epochs
                      for t in trials)
        running = [t for t in trials if status[t.trial_id] == "RUNNING"]
        text = (f"[{duration(elapsed):>7}] {len(done)}/{self.samples} trials: {len(done)} done ({stopped} stopped "
                f"early, {errored} errored), {len(running)} running")
        # of equal scores the first trial by id, as the summary and tune.best (dogs.ranking)
        best = ranking.best(sorted(trials, key=lambda t: t.trial_id), lambda t: (t.last_result or {}).get(self.score),
                            self.mode)
        if best is not None:   # with the 95% interval of its score (dogs.uncertainty)
            value = best.last_result[self.score]
            bounds = uncertainty.interval(self.score.removeprefix("best_"), value, best.last_result)
            text += f" | best {self.score} {value:.4f}" + (f" [{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else "") \
                + f" ({best.trial_id})"
        finished = [t for t in done if t.last_result]
        ran = sum((t.last_result or {}).get(STEP, 0) for t in trials)
        if finished and ran and elapsed > 0:
            mean = sum(t.last_result.get(STEP, 0) for t in finished) / len(finished)
            left = (max(0, self.samples - len(done) - len(running)) * mean
                    + sum(max(0.0, mean - (t.last_result or {}).get(STEP, 0)) for t in running))
            text += f" | ~{duration(left * elapsed / ran)} left"
        return text

    def _print(self, trials, ended=None):
        self._last = time.monotonic()
        self.out(self.line(trials, self._last - (self._start or self._last), ended), flush=True)

    def __getstate__(self):
        # tuner.pkl: no clock; the printer is print
        return {"samples": self.samples, "epochs": self.epochs, "score": self.score, "mode": self.mode,
                "every_s": self.every_s, "out": print, "_start": None, "_last": None}
