"""The old name of tune.retention, for one reader only: Ray's tuner.pkl of an experiment started before the
rename names `tune.checkpoints.KeepBestAndLatest`, and --resume unpickles it. New code imports tune.retention."""
from tune.retention import KeepBestAndLatest

__all__ = ["KeepBestAndLatest"]
