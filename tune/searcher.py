"""Optuna TPE through Ray Tune, told the truth about trials that ASHA stopped early.

Ray 2.60's OptunaSearch tells Optuna COMPLETE with the partial-epoch score of a trial that ASHA
stopped at a low rung, so TPE takes a 1-epoch score for a finished result. Here such a trial is told
PRUNED (its per-epoch scores stay as Optuna intermediate values), so TPE ranks it below complete trials.
"""
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

STEP = "training_iteration"   # ASHA's time_attr, and the step OptunaSearch reports intermediate values at


class AshaAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that reports a trial stopped before `max_t` iterations as PRUNED."""

    def __init__(self, space, metric, mode, seed, max_t, points_to_evaluate=None):
        super().__init__(space=space, metric=metric, mode=mode, seed=seed, points_to_evaluate=points_to_evaluate)
        self.max_t = max_t

    def on_trial_complete(self, trial_id, result=None, error=False):
        stopped_early = (not error and result and result.get(STEP, self.max_t) < self.max_t
                         and trial_id in self._ot_trials and trial_id not in self._completed_trials)
        if not stopped_early:
            return super().on_trial_complete(trial_id, result=result, error=error)

        # Tune skips on_trial_result for the result ASHA stopped on: record it as the last intermediate value
        ot_trial = self._ot_trials[trial_id]
        if result.get(self.metric) is not None:
            ot_trial.report(result[self.metric], result[STEP])
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def study_states(self):
        """{optuna trial number: state name}, e.g. for tests and the summary."""
        return {t.number: t.state.name for t in self._ot_study.trials}
