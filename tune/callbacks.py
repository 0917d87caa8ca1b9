"""The Ray callbacks of a search and the session they share: which checkpoints a trial keeps, each trial's result.json and progress.csv across retries, its TensorBoard curves and the HParams table, and MLflow's logger for a tracker that may stop answering.

Which checkpoint folders a trial keeps: its best epoch's (by the search's metric and mode) and its latest.

Ray can keep them itself (`CheckpointConfig(num_to_keep=1)`), but then it saves the whole experiment state
after every trial checkpoint (Ray 2.60: `sync_every_n_trial_checkpoints=num_to_keep`), so that its saved
state never names a checkpoint it has deleted: O(N trials) of work per checkpoint, a driver cost per trial
that grows with N. tune.search lets Ray keep every checkpoint and save its state periodically (every
max(10 s, 19 x what a save takes)), and this callback deletes what a trial no longer needs, at each save:

- Tune calls every callback's `get_state()` inside each save of the experiment state, right after it
  wrote the trials' state (TuneController.save_to_dir), then copies the saved files to the experiment folder
  in the background. `--resume` reads the last copy there, which names each trial's latest checkpoint at
  that save. So at a save a trial keeps its best checkpoint and every checkpoint from its latest one at the
  previous save on: the previous save's copy is in the experiment folder by then (it started right after
  that save, at least 10 s ago), and this save's names nothing older.
- At the end of `fit()` (`on_experiment_end`) Tune has just saved the final state and waited for its copy:
  every trial keeps its best checkpoint and its latest (a trial that ran 1 epoch: one folder).
- A copy can fail (a full disk, a lost connection to the storage: Ray logs it and goes on), and then the
  experiment folder's state still names the checkpoints of an older save. So a save counts only once the
  experiment folder's `experiment_state-*.json` is at least as new as it; until then pruning stays at the last
  save that did (a full disk freed: `--resume` continues from checkpoints that are still there).

Best = the checkpoint whose epoch has the best `metric` by `mode`, of equal ones the later: what
tune.experiment.best_checkpoint (tune.best) picks among the kept folders. Only folders this callback saw
Tune record (`on_checkpoint`, with that epoch's result) are ever deleted, and only `checkpoint_<n>` folders
of that trial's folder in the experiment; the state (`get_state`/`set_state`, saved with Ray's) is plain
dicts, so a resumed search keeps pruning where it stopped.

What one fit of a search and the Tune parts it runs tell each other: a `SearchSession` the driver makes
(tune.search.fit), hands to the study's searcher and the retention callback as an argument, and reads back after
fit(). Never pickled with them (Ray's tuner.pkl): a resumed search gets a session of its own.

A new tuner's parts get it when tune.ray_tuner.make_tuner makes them. A restored tuner's parts are unpickled by Ray inside
tune.Tuner.restore, out of our hands: tune.ray_tuner.restore_tuner makes that call inside `restoring(session)`, and each
part takes that session as it is unpickled (`unpickled_into`).

Each trial's result.json and progress.csv: Ray's JSON and CSV loggers, except that a trial retried in the same
search continues its own files instead of starting again from Ray's older copy of them.

Ray's loggers write a trial's files in the driver's staging folder, and Ray copies that folder to the experiment
folder only when it saves the experiment state (every 10 s or more). When a trial starts again from a checkpoint,
each logger first copies the experiment folder's file over the staging one (Ray 2.60:
LoggerCallback._restore_from_remote): right for a resumed search (a new driver, whose staging folder is empty),
wrong for a trial retried after its worker died, whose staging file is the whole history while the copy misses
every epoch since the last save. result.json (what tune.best ranks) then lost those epochs while retention kept
their checkpoints: the kept "best" was not the best of the history. Here a staging file this driver already
wrote is kept and appended to.

TensorBoard for a search: each trial's curves, and an HParams table that compares all trials.

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
A trial's run is named as everywhere (tune.experiment: `#3 ef4ab16e`, Tune's trial name; TensorBoard names a run by
its folder); a trial of an experiment made before that keeps writing into its trial folder, beside its earlier
curves.
The dashboard ticks the first 5 metrics only (and the first 5 hparams), so the score and stopped_early come
first. Its axes are linear until the user picks Log in a column's scale: a log-uniform lr cannot ask for one.
`tensorboard --logdir <experiment folder>` shows both.

Ray's MLflow logger callback for a tracker that may stop answering mid-search: the first call that fails costs
MLflow's bounded wait (tune.trackers.MLFLOW_HTTP_BOUNDS) and one warning; logging stops, the search goes on.
An epoch's results go in one MLflow batch (one SQLite transaction, one HTTP request).
"""
import contextlib
import contextvars
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow.fs
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.result import TIMESTEPS_TOTAL, TRAINING_ITERATION
from ray.tune.utils import flatten_dict
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter

from dogs import ranking, uncertainty
from dogs.config import METRICS
from tune.trackers import short_reason


CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")
STATE_FILE = re.compile(r"experiment_state-.*\.json")
CLOCK_SLACK_S = 1.0   # a file's time may lag the clock by the file system's tick; saves are >= 10 s apart


def checkpoint_number(name):
    return int(CHECKPOINT_NAME.fullmatch(name).group(1))


class KeepBestAndLatest(tune.Callback):
    """Deletes the checkpoint folders a trial no longer needs (see the module docstring). Each checkpoint Tune
    registers sets the session's `checkpointed` (tune.callbacks), which tune.ray_tuner's time budget waits for."""

    def __init__(self, metric, mode, session=None):
        self.metric, self.mode = metric, mode
        self.session = session or SearchSession()
        self.scores = {}    # trial id -> {checkpoint folder name: its epoch's metric} of the folders kept so far
        self.saved = {}     # trial id -> its latest checkpoint at the last save whose copy reached the experiment
        self.pending = None  # (time, {trial id: latest checkpoint}) of the last save, until its copy is seen there
        self._fs = self._root = None   # the experiment's filesystem and folder, from Tune's checkpoints

    # ---- Tune's calls ----
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        """Record a checkpoint Tune is about to register, with its epoch's score."""
        self.session.checkpointed.set()
        path = PurePosixPath(checkpoint.path)
        result = trial.last_result or {}
        if (not CHECKPOINT_NAME.fullmatch(path.name) or path.parent.name != f"trial_{trial.trial_id}"
                or result.get("checkpoint_dir_name") != path.name):
            return   # not a folder of ours, or its result unknown: never deleted
        if self._root is None:
            self._fs, self._root = checkpoint.filesystem, str(path.parent.parent)
        if str(path.parent.parent) != self._root:
            return
        self.scores.setdefault(trial.trial_id, {})[path.name] = result.get(self.metric)

    def get_state(self):
        """Called inside each save of the experiment state: prune against the last save whose copy reached the
        experiment folder, then remember this one's latest checkpoints until its copy is seen there too."""
        self.confirm()
        self.prune(self.saved)
        latest = {trial_id: max(names, key=checkpoint_number) for trial_id, names in self.scores.items() if names}
        self.pending = (time.time(), latest)
        # what a --resume from this save's copy starts from (read back only if the copy reached the folder)
        return {"scores": self.scores, "saved": latest}

    def set_state(self, state):
        self.scores, self.saved = state["scores"], state["saved"]

    def on_experiment_end(self, trials, **info):
        """After the final save (written, and its copy waited for): every trial keeps its best and its latest,
        unless that copy failed."""
        self.confirm()
        self.prune(self.saved)

    def confirm(self):
        """The pending save counts once the experiment folder holds a state file written at or after it."""
        if self.pending is None or self._fs is None:
            return
        try:
            infos = self._fs.get_file_info(pyarrow.fs.FileSelector(self._root))
        except OSError:   # the storage cannot be listed now: nothing confirmed
            return
        newest = max((info.mtime.timestamp() for info in infos
                      if STATE_FILE.fullmatch(info.base_name) and info.mtime is not None), default=None)
        if newest is not None and newest >= self.pending[0] - CLOCK_SLACK_S:
            self.saved, self.pending = self.pending[1], None

    # ---- pruning ----
    def keep(self, trial_id, since):
        """Names of the trial's folders to keep: its best, and every one from `since` (a name) on."""
        names = self.scores.get(trial_id, {})
        if not names:
            return set()
        # the best by dogs.ranking, of equal ones the later (as tune.experiment.best_checkpoint); none finite: the latest
        best = ranking.best(sorted(names, key=checkpoint_number), names.get, self.mode, ties="last") or max(names, key=checkpoint_number)
        return {best} | {name for name in names if since is None or checkpoint_number(name) >= checkpoint_number(since)}

    def prune(self, since):
        """Delete, per trial, the recorded folders that are neither its best nor from since[trial] on."""
        if self._fs is None:   # no checkpoint recorded by this driver yet (a resumed search): nothing known
            return
        for trial_id, names in self.scores.items():
            keep = self.keep(trial_id, since.get(trial_id))
            for name in sorted(set(names) - keep):
                path = f"{self._root}/trial_{trial_id}/{name}"
                try:
                    self._fs.delete_dir(path)
                except FileNotFoundError:
                    pass
                except OSError as err:   # the search goes on; the folder stays
                    print(f"Warning: could not delete the checkpoint {path}: {err}", file=sys.stderr)
                del names[name]

    def __getstate__(self):
        # tuner.pkl: no filesystem handle, no session (the driver's)
        return {key: value for key, value in {**self.__dict__, "_fs": None, "_root": None, "pending": None}.items()
                if key != "session"}

    def __setstate__(self, state):
        self.__dict__.update({"pending": None, **state})   # a tuner.pkl from before `pending`
        self.session = unpickled_into()   # the session of the --resume that unpickles it (tune.callbacks)


@dataclass
class SearchSession:
    # the experiment folder as this session names it: a moved or copied experiment continues its own study.db (or
    # its bucket's), never the one where tuner.pkl says it was searched; None: as the searcher's saved state says
    exp_dir: str | None = None
    # why the study's database was lost (None while it answers): the searcher stopped Tune as on Ctrl-C and kept what
    # it could not write in its saved state; tune.search says this in one line
    lost: str | None = None
    # set at each checkpoint Tune registers: the time budget stops a search only once this session made progress
    checkpointed: threading.Event = field(default_factory=threading.Event)


_RESTORING = contextvars.ContextVar("dogs_tune_restoring", default=None)


@contextlib.contextmanager
def restoring(session):
    """Parts unpickled inside this block (Ray's tune.Tuner.restore) take `session`."""
    token = _RESTORING.set(session)
    try:
        yield session
    finally:
        _RESTORING.reset(token)


def unpickled_into():
    """The session a part being unpickled takes: the restore's in progress, else a session of its own (a part
    unpickled by itself, as the tests do)."""
    return _RESTORING.get() or SearchSession()


class ContinueOwnLog:
    """Mixin for Ray's logger callbacks: restore a file from the experiment folder only if this driver has none."""

    def _restore_from_remote(self, file_name, trial):
        local = Path(trial.local_path, file_name)
        if local.is_file() and local.stat().st_size > 0:
            return   # written by this driver: every epoch reported so far, newer than any copy
        super()._restore_from_remote(file_name, trial)


class JsonLogger(ContinueOwnLog, JsonLoggerCallback):
    """result.json: one JSON line per epoch, whole across retries."""


class CSVLogger(ContinueOwnLog, CSVLoggerCallback):
    """progress.csv: one row per epoch, whole across retries."""


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


class GuardedMLflowCallback(MLflowLoggerCallback):
    broken = None   # why the tracker stopped answering (then nothing more is sent to it)

    def _guard(self, call, *args, **kwargs):
        if self.broken:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:   # MLflow's errors, a refused connection, a timeout: never the search
            self.broken = short_reason(err)
            print(f"Warning: --log mlflow: the tracker at {self.tracking_uri} stopped answering ({self.broken}); "
                  "no more trials are logged to it, the search goes on", file=sys.stderr)
            return None

    def setup(self, *args, **kwargs):
        return self._guard(super().setup, *args, **kwargs)

    def log_trial_start(self, trial):
        return self._guard(super().log_trial_start, trial)

    def log_trial_result(self, iteration, trial, result):
        return self._guard(self._log_batch, trial, result)

    def log_trial_end(self, trial, failed=False):
        return self._guard(super().log_trial_end, trial, failed)

    def _log_batch(self, trial, result):
        """The epoch's numbers (as Ray's callback picks them: flattened, those float() takes) in one log_batch.
        Ray's own sends ~30 log_metric calls, a transaction each: 0.1 s an epoch on an idle 2-core machine, over
        Tune's 0.5 s warn_if_slow threshold on a busy one (four "may be a performance bottleneck" lines an epoch).
        The run is the one Ray's log_trial_start made for the trial (its _trial_runs: Ray 2.60, pinned)."""
        step = result.get(TIMESTEPS_TOTAL) or result[TRAINING_ITERATION]
        now = int(time.time() * 1000)
        metrics = [Metric(key, number, now, step) for key, number in map(as_number, flatten_dict(result).items())
                   if number is not None]
        MlflowClient(tracking_uri=self.tracking_uri).log_batch(self._trial_runs[trial], metrics=metrics)


def as_number(item):
    """(key, float(value)), or (key, None) for a value MLflow cannot take as a metric (a string, a list)."""
    key, value = item
    try:
        return key, float(value)
    except (TypeError, ValueError):
        return key, None
