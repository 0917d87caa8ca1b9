"""Ray's MLflow logger callback for a tracker that may stop answering mid-search: the first call that fails costs
MLflow's bounded wait (tune.trackers.MLFLOW_HTTP_BOUNDS) and one warning; logging stops, the search goes on.
An epoch's results go in one MLflow batch (one SQLite transaction, one HTTP request)."""
import sys
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.result import TIMESTEPS_TOTAL, TRAINING_ITERATION
from ray.tune.utils import flatten_dict

from tune.trackers import short_reason


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
