"""What Ray's pickles of experiments started before 2026-12-07 name, and only that: delete this module (and the
lines that point here: tune/__init__.py's call, tune.search's __getattr__, tune.progress's __setstate__) after
2027-03-01, when no experiment of that week is resumed any more.

Ray's tuner.pkl names the search's callbacks, its searcher and its trial-name function by module and class, and
--resume unpickles it (tests/test_checkpoints.py unpickles each old name):
- the modules renamed or merged since (OLD_MODULES: old name -> the module its names live in now) are registered
  under their old names, as modules that look a name up in the new one on first use (the new ones import Ray);
- `tune.search.trial_dirname`: tune.ray_tuner's (tune.search's module __getattr__ asks here);
- a `tune.progress.ProgressCallback` pickled before its trial lines: no searched names, no experiment folder
  (its __setstate__ is progress_state).
New code imports the new names.
"""
import importlib
import sys
import types

OLD_MODULES = {
    "tune.checkpoints": "tune.callbacks",            # 2026-12-03, then 2026-12-06
    "tune.tuner": "tune.ray_tuner",                  # 2026-12-06, #25: names a newcomer guesses
    "tune.searcher": "tune.study_searcher",
    "tune.stop_when_flat": "tune.ray_tuner",
    "tune.names": "tune.experiment",
    "tune.retention": "tune.callbacks",              # 2026-12-06, #25: tune/ down to 22 modules
    "tune.session": "tune.callbacks",
    "tune.trial_logs": "tune.callbacks",
    "tune.tensorboard": "tune.callbacks",
    "tune.guarded_mlflow": "tune.callbacks",
    "tune.estimate": "tune.progress",
    "tune.distributions": "tune.space_values",
    "tune.combinations": "tune.space_values",
    "tune.state": "tune.resume",
    "tune.lock": "tune.storage",
    "tune.cli": "tune.spaces",
    "tune.plots": "tune.report",
    "dogs.trial": "dogs.ray_trainable",
    "dogs.inference": "dogs.classifier",
    "dogs.predict": "dogs.submission",
}


def register_old_modules():
    """sys.modules[old]: a module whose names are those of OLD_MODULES[old], imported on first use."""
    for old, new in OLD_MODULES.items():
        module = types.ModuleType(old, f"{new}'s old name (tune.old_pickles)")

        def attribute(name, new=new):
            if name.startswith("__"):
                raise AttributeError(name)
            return getattr(importlib.import_module(new), name)

        module.__getattr__ = attribute
        sys.modules.setdefault(old, module)


def search_attribute(name):
    """tune.search.trial_dirname (imported on use: tune.ray_tuner imports Ray)."""
    if name == "trial_dirname":
        from tune.ray_tuner import trial_dirname
        return trial_dirname
    raise AttributeError(f"module 'tune.search' has no attribute {name!r}")


def progress_state(callback, state):
    """ProgressCallback.__setstate__: a callback pickled before the trial lines gets no searched names and no
    experiment folder."""
    callback.__dict__.update({"searched": [], "exp_dir": None, **state})
