"""tune.callbacks.KeepBestAndLatest on its own, driven as Tune drives it (no Ray started): each trial keeps its
best checkpoint, and every checkpoint from its latest one at the previous save of the experiment state on
(the state --resume reads names it); after the last save, its best and its latest only."""
import math
import os
import pickle
import time
from types import SimpleNamespace

from ray import tune

from tune.callbacks import KeepBestAndLatest


def save(keep, root, copied=True):
    """A save of the experiment state as Tune makes it: the callback's get_state, then (unless the copy fails: a
    full disk) Ray's copy of the state file reaching the experiment folder. Returns get_state's state."""
    state = keep.get_state()
    if copied:
        (root / "experiment_state-2026.json").write_text("{}")
    return state


def folder_names(trial_dir):
    return sorted(p.name for p in trial_dir.iterdir())


class Trial:
    """A trial reporting epochs as Tune would: the epoch's result, then its checkpoint recorded."""

    def __init__(self, root, trial_id, callback):
        self.trial_id, self.dir, self.callback, self.epochs = trial_id, root / f"trial_{trial_id}", callback, 0
        self.dir.mkdir(parents=True)

    def epoch(self, score, metric="val_acc", name=None):
        name = name or f"checkpoint_{self.epochs:06d}"
        (self.dir / name).mkdir(exist_ok=True)
        (self.dir / name / "checkpoint.pt").write_bytes(b"x")
        self.epochs += 1
        trial = SimpleNamespace(trial_id=self.trial_id, last_result={metric: score, "checkpoint_dir_name": name})
        self.callback.on_checkpoint(iteration=0, trials=[], trial=trial,
                                    checkpoint=tune.Checkpoint(path=str(self.dir / name)))

    def kept(self):
        return [int(name.rsplit("_", 1)[1]) for name in folder_names(self.dir)]


def test_a_trial_keeps_its_best_and_what_the_last_saved_state_names(tmp_path):
    keep = KeepBestAndLatest("val_acc", "max")
    trial = Trial(tmp_path, "a", keep)
    for score in (0.9, 0.1):
        trial.epoch(score)
    save(keep, tmp_path)                 # save 1: names checkpoint 1 (the latest); nothing saved before it
    assert trial.kept() == [0, 1]
    for score in (0.2, 0.3):
        trial.epoch(score)
    save(keep, tmp_path)                 # save 2: the copy of save 1 may be all --resume has: 1 stays
    assert trial.kept() == [0, 1, 2, 3]
    save(keep, tmp_path)                 # save 3: save 2 named 3; 0 is the best
    assert trial.kept() == [0, 3]
    trial.epoch(0.95)
    save(keep, tmp_path)
    keep.on_experiment_end(trials=[])   # after the final save: the best and the latest
    assert trial.kept() == [4]


def test_best_is_tune_best_s_equal_scores_the_later_min_mode_nan_worst(tmp_path):
    ties, low, nan = (KeepBestAndLatest("val_acc", "max"), KeepBestAndLatest("val_loss", "min"),
                      KeepBestAndLatest("val_acc", "max"))
    for keep, name, metric, scores in ((ties, "t", "val_acc", (0.5, 0.6, 0.6, 0.3)),
                                       (low, "l", "val_loss", (0.9, 0.2, 0.4, 0.8)),
                                       (nan, "n", "val_acc", (0.4, math.nan, float("nan"), 0.1))):
        trial = Trial(tmp_path, name, keep)
        for score in scores:
            trial.epoch(score, metric)
        save(keep, tmp_path)
        save(keep, tmp_path)
        keep.on_experiment_end(trials=[])
        assert trial.kept() == {"t": [2, 3], "l": [1, 3], "n": [0, 3]}[name]


def test_never_deletes_what_it_cannot_vouch_for(tmp_path):
    keep = KeepBestAndLatest("val_acc", "max")
    trial = Trial(tmp_path, "a", keep)
    trial.epoch(0.1)
    # a checkpoint whose result is not the one Tune gives with it (its score unknown)
    (trial.dir / "checkpoint_000001").mkdir()
    keep.on_checkpoint(iteration=0, trials=[], trial=SimpleNamespace(trial_id="a", last_result={
        "val_acc": 0.0, "checkpoint_dir_name": "checkpoint_000000"}),
        checkpoint=tune.Checkpoint(path=str(trial.dir / "checkpoint_000001")))
    trial.epochs = 2
    # a folder not named checkpoint_<n>, and one in another trial's folder
    trial.epoch(0.2, name="best_weights")
    other = tmp_path / "trial_b" / "checkpoint_000000"
    other.mkdir(parents=True)
    keep.on_checkpoint(iteration=0, trials=[], trial=SimpleNamespace(trial_id="a", last_result={
        "val_acc": 0.0, "checkpoint_dir_name": "checkpoint_000000"}), checkpoint=tune.Checkpoint(path=str(other)))
    trial.epoch(0.3)
    trial.epoch(0.4)
    for _ in range(3):
        save(keep, tmp_path)
    keep.on_experiment_end(trials=[])
    assert folder_names(trial.dir) == ["best_weights", "checkpoint_000001", "checkpoint_000004"]
    assert other.is_dir()


def test_a_resumed_search_prunes_from_the_saved_state(tmp_path):
    first = KeepBestAndLatest("val_acc", "max")
    trial = Trial(tmp_path, "a", first)
    for score in (0.5, 0.9, 0.1, 0.2):
        trial.epoch(score)
    saved = pickle.loads(pickle.dumps(save(first, tmp_path)))   # the state --resume reads: names checkpoint 3
    trial.epoch(0.3)                 # then the driver is killed: checkpoint 4 is unknown to that state
    # Tune restores the callback from tuner.pkl and sets its state from the saved one
    second = pickle.loads(pickle.dumps(first))
    second.set_state(saved)
    save(second, tmp_path)               # before any checkpoint of this driver: nothing deleted
    assert trial.kept() == [0, 1, 2, 3, 4]
    trial.callback, trial.epochs = second, 4
    trial.epoch(0.15)                # the trial goes on from checkpoint 3: epoch 4 again
    save(second, tmp_path)               # against the state it resumed from (3): 0 and 2 go
    assert trial.kept() == [1, 3, 4]
    second.on_experiment_end(trials=[])
    assert trial.kept() == [1, 4]


def test_a_checkpoint_tells_the_session_of_its_own_search_only(tmp_path):
    """Each checkpoint Tune registers sets `checkpointed` (what the time budget waits for) of the session the
    callback reports to: a new tuner's, given as an argument, or a resumed one's, which the callback takes as Ray
    unpickles it from tuner.pkl inside tune.ray_tuner.restore_tuner; never another search's in the same process."""
    from tune.callbacks import SearchSession, restoring

    new, resumed, other = SearchSession(), SearchSession(), SearchSession()
    first = KeepBestAndLatest("val_acc", "max", new)
    pickled = pickle.dumps(first)                            # tuner.pkl
    KeepBestAndLatest("val_acc", "max", other)
    Trial(tmp_path, "a", first).epoch(0.5)
    assert new.checkpointed.is_set() and not other.checkpointed.is_set()
    with restoring(resumed):
        second = pickle.loads(pickled)
    assert second.session is resumed and not resumed.checkpointed.is_set()
    Trial(tmp_path, "b", second).epoch(0.6)
    assert resumed.checkpointed.is_set() and not other.checkpointed.is_set()
    assert pickle.loads(pickled).session not in (new, resumed, other)   # outside a restore: a session of its own


def test_an_experiment_started_before_the_renames_still_unpickles():
    """Ray's tuner.pkl names the callbacks, the searcher and the trial-name function by module: an experiment
    interrupted before a rename or merge (tune.old_pickles.OLD_MODULES) still resumes."""
    import importlib
    import inspect
    import pickle

    from tune import callbacks, ray_tuner
    from tune.old_pickles import OLD_MODULES

    old = b"(ctune.checkpoints\nKeepBestAndLatest\nctune.search\ntrial_dirname\nt."   # two globals, as a tuple
    assert pickle.loads(old) == (callbacks.KeepBestAndLatest, ray_tuner.trial_dirname)
    for old_name, new_name in OLD_MODULES.items():   # every class and function of the new module, by its old name
        new = importlib.import_module(new_name)
        for name, thing in vars(new).items():
            if (inspect.isclass(thing) or inspect.isfunction(thing)) and thing.__module__ == new_name:
                assert pickle.loads(f"c{old_name}\n{name}\n.".encode()) is thing, (old_name, name)


def test_a_save_whose_copy_failed_prunes_nothing_the_older_copy_names(tmp_path):
    """A full disk (or a lost storage) fails Ray's copy of a save: the experiment folder's state still names the
    checkpoints of the save before, which --resume continues from once there is space; they stay."""
    keep = KeepBestAndLatest("val_acc", "max")
    trial = Trial(tmp_path, "a", keep)
    for score in (0.9, 0.1):
        trial.epoch(score)
    save(keep, tmp_path)                        # save 1, copied: names checkpoint 1
    for score in (0.2, 0.3):
        trial.epoch(score)
    save(keep, tmp_path, copied=False)          # save 2 (names 3): its copy fails, the folder's state is older
    state_file = tmp_path / "experiment_state-2026.json"
    os.utime(state_file, (time.time() - 60, time.time() - 60))
    trial.epoch(0.4)
    save(keep, tmp_path, copied=False)          # save 3: save 2 never reached the folder: 1 stays
    assert trial.kept() == [0, 1, 2, 3, 4]
    keep.on_experiment_end(trials=[])           # the final copy failed too: what save 1 names stays
    assert 1 in trial.kept() and 0 in trial.kept()
    save(keep, tmp_path)                        # space again: a copy reaches the folder
    save(keep, tmp_path)
    keep.on_experiment_end(trials=[])
    assert trial.kept() == [0, 4]
