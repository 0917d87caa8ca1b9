"""TensorBoard for a search: each trial's curves, and an HParams table that compares all trials.

Ray's own writer only logs scalars under `ray/tune/` and an hparams record whose metrics are every
result key. This callback writes, into each trial's folder:
  - one scalar per metric per epoch (val_acc, val_loss, train_loss, train_acc, and best_<metric>: the
    search's metric at its best epoch so far, its score),
  - an HParams session start (the searched parameters) when the trial starts, and a session end
    when it finishes.
TensorBoard's HParams dashboard builds the comparison from those sessions: each trial's hparams against
the last value of each curve: its final scores, and best_<metric> (its best epoch, what it is ranked by).
`tensorboard --logdir <experiment folder>` shows both.
"""
import pyarrow.fs
from ray import tune
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from dogs.config import METRICS


def hparam_value(value):
    """HParams takes numbers, strings and booleans only."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class TensorBoardCallback(tune.Callback):
    """Writes curves and HParams sessions of every trial into the trial's folder."""

    def __init__(self, hparam_names, metric="val_acc"):
        self.hparam_names = list(hparam_names)
        self.metric = metric
        self._writers = {}

    @property
    def curves(self):
        return (*METRICS, f"best_{getattr(self, 'metric', 'val_acc')}")

    def _writer(self, trial):
        if trial.trial_id not in self._writers:
            # a local --storage gets the files at once; for a URI, Ray uploads the driver's staging copy
            local = isinstance(trial.storage.storage_filesystem, pyarrow.fs.LocalFileSystem)
            self._writers[trial.trial_id] = SummaryWriter(log_dir=trial.path if local else trial.local_path,
                                                          flush_secs=5)
        return self._writers[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        hparams = {k: hparam_value(trial.config[k]) for k in self.hparam_names if k in trial.config}
        _, session_start, _ = hparams_summaries(hparams, {})
        self._writer(trial).file_writer.add_summary(session_start)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        writer = self._writer(trial)
        step = result.get("epoch", result.get("training_iteration"))
        for name in self.curves:
            if name in result:
                writer.add_scalar(name, result[name], step)
        writer.flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        _, _, session_end = hparams_summaries({}, {})
        self._writer(trial).file_writer.add_summary(session_end)
        self._close(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        # no session end: a retried trial starts its session again
        self._close(trial)

    def _close(self, trial):
        writer = self._writers.pop(trial.trial_id, None)
        if writer is not None:
            writer.close()

    def on_experiment_end(self, trials, **info):
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __getstate__(self):
        # open writers stay with the driver; a pickled copy (tuner.pkl) starts without them
        return {"hparam_names": self.hparam_names, "metric": self.metric, "_writers": {}}
