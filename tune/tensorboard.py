"""TensorBoard for a search: each trial's curves, and an HParams table that compares all trials.

Ray's own writer only logs scalars under `ray/tune/` and an hparams record whose metrics are every
result key. This callback writes, into each trial's run (<experiment>/tensorboard/<trial name>/, below):
  - one scalar per metric per epoch (val_acc, val_loss, train_loss, train_acc, and best_<metric>: the
    search's metric at its best epoch so far, its score; best_<metric>_low/_high: its 95% interval, written
    at each epoch that sets it, so that the last value is the best epoch's: none for a loss),
  - the HParams experiment (every searched parameter with its domain: choices as discrete values, numbers
    among them as their own text (16, 3e-4: TensorBoard prints a number as 16.000), booleans as true/false,
    ranges as intervals; and the metrics, the score first), and a session start (the trial's values) when
    the trial starts,
  - when it ends, a `stopped_early` scalar (1 = ASHA stopped it before its last epoch) and a session end
    whose status is Success (complete or stopped early) or Failure (errored after its retries); a trial
    still running has none (Unknown).
TensorBoard's HParams dashboard builds the comparison from those: each trial's hparams against the last
value of each curve: best_<metric> (its best epoch, what it is ranked by), stopped_early, its final scores.
A trial's run is named as everywhere (tune.names: `#3 ef4ab16e`, Tune's trial name; TensorBoard names a run by
its folder); a trial of an experiment made before that keeps writing into its trial folder, beside its earlier
curves.
The dashboard ticks the first 5 metrics only (and the first 5 hparams), so the score and stopped_early come
first. Its axes are linear until the user picks Log in a column's scale: a log-uniform lr cannot ask for one.
`tensorboard --logdir <experiment folder>` shows both.
"""
import time
from pathlib import Path

import pyarrow.fs
from ray import tune
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp   # its *_pb helpers need no TensorFlow
from torch.utils.tensorboard import SummaryWriter

from dogs import uncertainty
from dogs.config import METRICS

STOPPED_EARLY = "stopped_early"
FOLDER = "tensorboard"   # <experiment>/tensorboard/<trial name>/: one TensorBoard run per trial


def run_folder(trial_folder, name):
    """Where a trial's TensorBoard files go: <experiment>/tensorboard/<name>, or the trial's folder when it holds
    some already (a trial of an experiment made before the runs were named, resumed: its curves stay whole)."""
    if any(Path(trial_folder).glob("events.out.tfevents.*")):
        return str(trial_folder)
    return str(Path(trial_folder).parent / FOLDER / name.replace("/", "_"))   # a folder name holds no /


def hparam_value(value):
    """HParams takes numbers, strings and booleans only."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def boolean_choice(param):
    return param["kind"] == "choice" and all(isinstance(v, bool) for v in param["args"])


def session_value(param, value):
    """A trial's value of a searched parameter as its HParam holds it: a choice's as text unless all are booleans
    (16 stays 16: TensorBoard would print the number 16 as 16.000), a range's a number."""
    if param["kind"] == "choice" and not boolean_choice(param):
        return str(value)
    return hparam_value(value)


def hparam(param):
    """The HParam of a searched parameter of the space: a choice is discrete (booleans, or else each value's own
    text), a range an interval."""
    if param["kind"] == "choice":
        dtype = bool if boolean_choice(param) else str
        return hp.HParam(param["name"], hp.Discrete([session_value(param, v) for v in param["args"]], dtype=dtype))
    low, high = param["args"][0], param["args"][1]
    if param["kind"] in ("randint", "lograndint"):
        high -= 1
    return hp.HParam(param["name"], hp.RealInterval(float(low), float(high)))


class TensorBoardCallback(tune.Callback):
    """Writes curves and HParams sessions of every trial into the trial's folder."""

    def __init__(self, params, metric="val_acc"):
        self.params = [p for p in params if p["kind"] != "fixed"]   # the searched parameters of the space
        self.metric = metric
        self._writers = {}

    @property
    def curves(self):
        return (f"best_{self.metric}", *METRICS)

    def metrics(self):
        """The HParams metrics, the score first: the dashboard shows the first 5 and hides the rest."""
        score, *finals = self.curves
        return [hp.Metric(score, description=f"the {self.metric} of the trial's best epoch: what the search ranks by"),
                hp.Metric(STOPPED_EARLY, description="1: ASHA stopped the trial before its last epoch"),
                *(hp.Metric(name, description="the 95% interval of the score") for name in self.bounds),
                *(hp.Metric(name, description="its last epoch's") for name in finals)]

    @property
    def bounds(self):
        """The curves of the score's 95% interval (dogs.uncertainty; none for a loss)."""
        return (f"best_{self.metric}_low", f"best_{self.metric}_high") if uncertainty.has_interval(self.metric) else ()

    def _writer(self, trial):
        if trial.trial_id not in self._writers:
            # a local --storage gets the files at once; for a URI, Ray uploads the driver's staging copy
            local = isinstance(trial.storage.storage_filesystem, pyarrow.fs.LocalFileSystem)
            folder = run_folder(trial.path if local else trial.local_path, str(trial))
            self._writers[trial.trial_id] = SummaryWriter(log_dir=folder, flush_secs=5)
        return self._writers[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        # the experiment (every parameter's domain, the metrics), then this trial's values
        writer = self._writer(trial).file_writer
        writer.add_summary(hp.hparams_config_pb([hparam(p) for p in self.params], self.metrics()))
        values = {p["name"]: session_value(p, trial.config[p["name"]]) for p in self.params
                  if p["name"] in trial.config}   # a conditional parameter that does not exist in this trial: blank
        writer.add_summary(hp.hparams_pb(values, trial_id=str(trial), start_time_secs=time.time()))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        writer = self._writer(trial)
        step = result.get("epoch", result.get("training_iteration"))
        for name in self.curves:
            if name in result:
                writer.add_scalar(name, result[name], step)
        # the best score's interval, from the epoch that set it (macro-F1's bootstrap is in that epoch's result)
        bounds = self.bounds and uncertainty.interval(self.metric, result.get(f"best_{self.metric}"), result)
        if bounds and result.get(self.metric) == result.get(f"best_{self.metric}"):
            for name, value in zip(self.bounds, bounds):
                writer.add_scalar(name, value, step)
        writer.flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epoch = last.get("epoch", last.get("training_iteration", 0))
        self._writer(trial).add_scalar(STOPPED_EARLY, float(epoch < trial.config.get("epochs", epoch)), epoch)
        self._end(trial, "STATUS_SUCCESS")

    def on_trial_error(self, iteration, trials, trial, **info):
        # Tune calls this once a trial has no retries left (a retry is on_trial_recover)
        self._end(trial, "STATUS_FAILURE")

    def _end(self, trial, status):
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(status), end_time_secs=time.time())
        # summary_v2 has no session end; its v1 helper needs TensorFlow: built here as summary_v2 builds a start
        data = plugin_data_pb2.HParamsPluginData(session_end_info=end, version=metadata.PLUGIN_DATA_VERSION)
        summary = Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG,
                                               metadata=metadata.create_summary_metadata(data))])
        self._writer(trial).file_writer.add_summary(summary)
        writer = self._writers.pop(trial.trial_id)
        writer.close()

    def on_experiment_end(self, trials, **info):
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __getstate__(self):
        # open writers stay with the driver; a pickled copy (tuner.pkl) starts without them
        return {"params": self.params, "metric": self.metric, "_writers": {}}
