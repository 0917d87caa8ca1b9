"""Each trial's result.json and progress.csv: Ray's JSON and CSV loggers, except that a trial retried in the same
search continues its own files instead of starting again from Ray's older copy of them.

Ray's loggers write a trial's files in the driver's staging folder, and Ray copies that folder to the experiment
folder only when it saves the experiment state (every 10 s or more). When a trial starts again from a checkpoint,
each logger first copies the experiment folder's file over the staging one (Ray 2.60:
LoggerCallback._restore_from_remote): right for a resumed search (a new driver, whose staging folder is empty),
wrong for a trial retried after its worker died, whose staging file is the whole history while the copy misses
every epoch since the last save. result.json (what tune.best ranks) then lost those epochs while retention kept
their checkpoints: the kept "best" was not the best of the history. Here a staging file this driver already
wrote is kept and appended to.
"""
from pathlib import Path

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback


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
