"""Which checkpoint folders a trial keeps: its best epoch's (by the search's metric and mode) and its latest.

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
"""
import re
import sys
import time
from pathlib import PurePosixPath

import pyarrow.fs

from ray import tune

from dogs import ranking
from tune.session import SearchSession, unpickled_into

CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")
STATE_FILE = re.compile(r"experiment_state-.*\.json")
CLOCK_SLACK_S = 1.0   # a file's time may lag the clock by the file system's tick; saves are >= 10 s apart


def number(name):
    return int(CHECKPOINT_NAME.fullmatch(name).group(1))


class KeepBestAndLatest(tune.Callback):
    """Deletes the checkpoint folders a trial no longer needs (see the module docstring). Each checkpoint Tune
    registers sets the session's `checkpointed` (tune.session), which tune.tuner's time budget waits for."""

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
        latest = {trial_id: max(names, key=number) for trial_id, names in self.scores.items() if names}
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
        best = ranking.best(sorted(names, key=number), names.get, self.mode, ties="last") or max(names, key=number)
        return {best} | {name for name in names if since is None or number(name) >= number(since)}

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
        self.session = unpickled_into()   # the session of the --resume that unpickles it (tune.session)
