"""Ray's MLflow logger callback for a tracker that may stop answering mid-search: the first call that fails costs
MLflow's bounded wait (tune.trackers.MLFLOW_HTTP_BOUNDS) and one warning; logging stops, the search goes on."""
import sys

from ray.air.integrations.mlflow import MLflowLoggerCallback

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
        return self._guard(super().log_trial_result, iteration, trial, result)

    def log_trial_end(self, trial, failed=False):
        return self._guard(super().log_trial_end, trial, failed)
