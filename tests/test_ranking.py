"""The rule for "best", stated once (dogs.ranking): by mode, a non-finite score is never best, ties go to the
earliest trial and the latest epoch; and every place that picks a best agrees with it."""
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from dogs import ranking
from tune import experiment
from tune.progress import ProgressCallback

relaxed = settings(deadline=None)   # a shared, loaded machine: no per-example time limit

# scores as results hold them: numbers (few distinct ones, so that ties happen), NaN, +-Infinity, missing
scores = st.lists(st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0, -1.0]), st.floats(allow_nan=True),
                            st.sampled_from([math.nan, math.inf, -math.inf, None])), max_size=12)
modes = st.sampled_from(["max", "min"])
ties = st.sampled_from(["first", "last"])


def reference(values, mode, tie):
    """Index of the best value, the plain way: walk in order, take a finite value that beats the best so far (or
    equals it, when the later of equal ones wins); None when no value is finite."""
    best = None
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        if best is None:
            best = i
            continue
        better = v > values[best] if mode == "max" else v < values[best]
        if better or (tie == "last" and v == values[best]):
            best = i
    return best


@relaxed
@given(scores, modes, ties)
def test_best_is_the_plain_walks_choice(values, mode, tie):
    assert ranking.best(range(len(values)), values.__getitem__, mode, tie) == reference(values, mode, tie)


@relaxed
@given(scores, modes, ties)
def test_ranked_is_every_finite_score_best_first(values, mode, tie):
    order = ranking.ranked(range(len(values)), values.__getitem__, mode, tie)
    assert sorted(order) == [i for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    signed = [values[i] if mode == "max" else -values[i] for i in order]
    assert signed == sorted(signed, reverse=True)
    for a, b in zip(order, order[1:]):   # equal scores: the earliest first (trials) or the latest first (epochs)
        if values[a] == values[b]:
            assert (a < b) if tie == "first" else (a > b)


@relaxed
@given(scores, modes)
def test_the_epoch_loop_keeps_the_best_epoch_the_rule_picks(values, mode):
    """dogs.engine's running best (ranking.improves, epoch by epoch) ends on the epoch ranking.best picks with
    ties="last" whenever any epoch is finite: the later of equal epochs, never a NaN or infinite one."""
    best = best_epoch = None
    for epoch, value in enumerate(values):
        if ranking.improves(value, best, mode):
            best, best_epoch = value, epoch
    picked = ranking.best(range(len(values)), values.__getitem__, mode, ties="last")
    if picked is not None:
        assert best_epoch == picked


def test_examples():
    assert ranking.best([0.5, 0.9, 0.7], float, "max") == 0.9
    assert ranking.best([0.5, 0.9, 0.7], float, "min") == 0.5
    assert ranking.best([math.nan, math.inf, 0.1], float, "max") == 0.1   # NaN and inf are never best
    assert ranking.best([math.nan, -math.inf, 3.0], float, "min") == 3.0
    assert ranking.best([None, math.nan], lambda v: v, "max") is None
    assert ranking.best(["a", "b"], {"a": 1.0, "b": 1.0}.get, "max") == "a"               # trials: the earliest
    assert ranking.best(["a", "b"], {"a": 1.0, "b": 1.0}.get, "max", ties="last") == "b"  # epochs: the latest
    assert ranking.improves(math.nan, None, "max") and not ranking.improves(math.nan, 0.1, "max")
    assert ranking.improves(0.1, math.nan, "min") and ranking.improves(0.5, 0.5, "max")


@relaxed
@given(st.lists(st.tuples(st.sampled_from([0.1, 0.2, math.nan, math.inf, None]),
                          st.sampled_from([0.1, 0.2, math.nan, None])), max_size=5), modes)
def test_tune_picks_the_best_trial_and_epoch_by_the_rule(epochs_of, mode):
    """tune.experiment (tune.best and the summary): a trial's score is its best epoch's (the latest of equal ones),
    the best trial the one with the best score (the earliest of equal ones); the progress line agrees."""
    trials = [experiment.Trial(trial_id=f"{i:05d}", path=f"t{i}", config={},
                               results=[{"epoch": e + 1, "val_acc": v} for e, v in enumerate(pair)])
              for i, pair in enumerate(epochs_of)]
    ranked = experiment.Experiment("x", {"search": {"metric": "val_acc", "mode": mode}}, trials)
    score = {t.trial_id: ranked.score(t) for t in trials}
    for t in trials:
        values = [r["val_acc"] for r in t.results]
        epoch = reference(values, mode, "last")
        assert score[t.trial_id] == ((None, None) if epoch is None else (values[epoch], epoch + 1))
    ids = [t.trial_id for t in trials]
    best = reference([score[i][0] for i in ids], mode, "first")
    picked = ranked.best_trial()
    assert (picked and picked.trial_id) == (None if best is None else ids[best])

    class Reported:   # what the progress line reads of a Tune trial
        def __init__(self, t):
            self.trial_id, self.status = t.trial_id, "RUNNING"
            self.last_result = {"best_val_acc": score[t.trial_id][0], "training_iteration": len(t.results)}

    line = ProgressCallback(len(trials), 2, "val_acc", mode).line([Reported(t) for t in trials], 1.0)
    assert ("best best_val_acc" in line) == (best is not None)
    if best is not None:
        assert line.endswith(f"({ids[best]})") or f"({ids[best]}) |" in line
