"""tune: the hyper-parameter search over the dogs trainable (Ray Tune + Optuna TPE + ASHA). See docs/search.md."""
from tune.old_pickles import register_old_modules

register_old_modules()   # the old module names Ray's pickles of older experiments hold (see tune/old_pickles.py)
