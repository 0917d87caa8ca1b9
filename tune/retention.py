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

Best = the checkpoint whose epoch has the best `metric` by `mode`, of equal ones the later: what
tune.experiment.best_checkpoint (tune.best) picks among the kept folders. Only folders this callback saw
Tune record (`on_checkpoint`, with that epoch's result) are ever deleted, and only `checkpoint_<n>` folders
of that trial's folder in the experiment; the state (`get_state`/`set_state`, saved with Ray's) is plain
dicts, so a resumed search keeps pruning where it stopped.
"""
import re
import sys
import threading
from pathlib import PurePosixPath

from ray import tune

from dogs import ranking

CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


def number(name):
    return int(CHECKPOINT_NAME.fullmatch(name).group(1))


class KeepBestAndLatest(tune.Callback):
    """Deletes the checkpoint folders a trial no longer needs (see the module docstring)."""
    # set at each checkpoint Tune registers in this process (a class attribute: a restored tuner's unpickled
    # callback sets it too): tune.tuner's time budget stops a search only once this session made progress
    checkpointed = threading.Event()

    def __init__(self, metric, mode):
        self.metric, self.mode = metric, mode
        self.scores = {}    # trial id -> {checkpoint folder name: its epoch's metric} of the folders kept so far
        self.saved = {}     # trial id -> its latest checkpoint at the last save of the experiment state
        self._fs = self._root = None   # the experiment's filesystem and folder, from Tune's checkpoints

    # ---- Tune's calls ----
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        """Record a checkpoint Tune is about to register, with its epoch's score."""
        KeepBestAndLatest.checkpointed.set()
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
        """Called inside each save of the experiment state: prune against the previous save, then remember
        this one's latest checkpoints."""
        self.prune(self.saved)
        self.saved = {trial_id: max(names, key=number) for trial_id, names in self.scores.items() if names}
        return {"scores": self.scores, "saved": self.saved}

    def set_state(self, state):
        self.scores, self.saved = state["scores"], state["saved"]

    def on_experiment_end(self, trials, **info):
        """After the final save (written and copied): every trial keeps its best and its latest."""
        self.prune(self.saved)

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
        # tuner.pkl: no filesystem handle
        return {**self.__dict__, "_fs": None, "_root": None}
