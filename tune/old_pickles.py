"""What Ray's pickles of experiments started before 2026-12-04 name, and only that: delete this module (and the
three lines that point here) after 2027-03-01, when no experiment of that week is resumed any more.

Ray's tuner.pkl names the search's callbacks and trial-name function by module and class, and --resume unpickles
it (tests/test_checkpoints.py unpickles such a name):
- `tune.checkpoints.KeepBestAndLatest`: tune.retention's callback before the rename (tune/__init__.py registers
  the old module name, on first use of the attribute: tune.retention imports Ray);
- `tune.search.trial_dirname`: tune.tuner's before it moved (tune.search's module __getattr__ asks here);
- a `tune.progress.ProgressCallback` pickled before its trial lines: no searched names, no experiment folder
  (its __setstate__ is progress_state).
New code imports tune.retention, tune.tuner and tune.progress.
"""
import sys
import types


def register_old_modules():
    """sys.modules["tune.checkpoints"]: a module whose one name, KeepBestAndLatest, is tune.retention's."""
    old = types.ModuleType("tune.checkpoints", "tune.retention's old name (tune.old_pickles)")

    def attribute(name):
        if name == "KeepBestAndLatest":
            from tune.retention import KeepBestAndLatest
            return KeepBestAndLatest
        raise AttributeError(f"module 'tune.checkpoints' has no attribute {name!r}")

    old.__getattr__ = attribute
    sys.modules.setdefault("tune.checkpoints", old)


def search_attribute(name):
    """tune.search.trial_dirname (imported on use: tune.tuner imports Ray)."""
    if name == "trial_dirname":
        from tune.tuner import trial_dirname
        return trial_dirname
    raise AttributeError(f"module 'tune.search' has no attribute {name!r}")


def progress_state(callback, state):
    """ProgressCallback.__setstate__: a callback pickled before the trial lines gets no searched names and no
    experiment folder."""
    callback.__dict__.update({"searched": [], "exp_dir": None, **state})
