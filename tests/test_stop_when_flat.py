"""search.stop_when_flat: the rule on sequences of finished trials (against an independent computation), the
setting's checks, and one real search that stops early and resumes without rerunning anything."""
import math
import re

import pandas as pd
import pytest
from hypothesis import given, strategies as st

from dogs.uncertainty import wilson
from tune import search, spaces
from tune.ray_tuner import Finished, beats_interval, flat_min_trials, flat_streaks, flat_verdict
from conftest import run_main
from test_search import iterations

N = 40   # validation images: a Wilson interval about +-0.15 wide, so that near scores tie
EPOCHS = 6   # each trial's planned epochs


def outcome(k, n=N, ran=EPOCHS, best_at=None):
    """(score, interval, epochs run, epoch of its best) of a trial whose best epoch got k of n validation images
    right."""
    return k / n, wilson(k, n), ran, ran if best_at is None else best_at


def named(outcomes):
    """Finished per trial: the names in another order than the trials finished (as Tune's ids)."""
    return [Finished(f"{(7 * i) % 31:02d}", score, bounds, ran, best_at, ran >= EPOCHS)
            for i, (score, bounds, ran, best_at) in enumerate(outcomes)]


def counts_by_hand(finished, mode="max"):
    """The count after each trial, written out plainly: how many trials since the last one that beat the best of
    the trials before it (beyond its interval's better end; anything finite beats no best; NaN never beats),
    leaving out trials that ran fewer epochs than the best had when it reached its best score and not all theirs."""
    out = []
    for i, (_, score, _, ran, _, complete) in enumerate(finished):
        before = [t for t in finished[:i] if math.isfinite(t[1])]
        sign = 1 if mode == "max" else -1
        best = min(before, key=lambda t: (-sign * t[1], t[0]), default=None)   # of equal scores the first by name
        count = out[-1] if out else 0
        if best is not None and not complete and ran < best[4]:   # not given the epochs the best needed
            out.append(count)
            continue
        edge = None if best is None else (best[2][1] if mode == "max" else best[2][0])
        beat = math.isfinite(score) and (best is None or sign * score > sign * edge)
        out.append(0 if beat else count + 1)
    return out


@st.composite
def trials(draw):
    """A finished trial: a score (or NaN), the epochs it ran (ASHA may stop it at any), the epoch of its best."""
    ran = draw(st.integers(1, EPOCHS))
    best_at = draw(st.integers(1, ran))
    if draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()):
        return float("nan"), None, ran, best_at
    return outcome(draw(st.integers(0, N)), ran=ran, best_at=best_at)


@given(st.lists(trials(), max_size=30))
def test_the_count_is_fair_trials_since_the_last_that_beat_the_best_interval(outcomes):
    finished = named(outcomes)
    assert [count for count, _ in flat_streaks(finished, "max")] == counts_by_hand(finished)


@given(st.lists(trials(), max_size=30), st.integers(1, 6), st.integers(0, 10))
def test_the_verdict_comes_at_the_first_run_of_m_after_the_start_up_trials_and_names_the_best_then(outcomes, m,
                                                                                                   at_least):
    finished = named(outcomes)
    counts = counts_by_hand(finished)
    found = flat_verdict(finished, "max", m, at_least)
    first = next((i for i, c in enumerate(counts) if c >= m and i + 1 >= at_least), None)
    assert (found is None) == (first is None)
    if found is not None:
        count, best = found
        assert count == counts[first] >= m
        finite = [t for t in finished[:first + 1] if math.isfinite(t[1])]
        # the best as the summary names it: the best score, of equals the first by name (trial id)
        assert best == (min(finite, key=lambda t: (-t[1], t[0])) if finite else None)


@given(st.integers(0, N), st.integers(1, 5), st.integers(1, 8))
def test_ties_within_the_interval_stop_after_m_and_clear_gains_never_stop(k, m, length):
    # the same score again: within the best's interval, so M repeats after the first stop the search
    same = named([outcome(k)] * (m + 1))
    assert flat_verdict(same, "max", m) == (m, min(same))
    # each score past the previous best's interval: never flat, whatever M
    rising, score = [], 0.0
    for _ in range(length):
        rising.append(Finished(f"{len(rising)}", score, (score - 0.01, score + 0.01)))
        score += 0.05
    assert flat_verdict(rising, "max", 1) is None


@given(st.integers(1, 4), st.integers(2, EPOCHS))
def test_trials_stopped_before_the_best_reached_its_best_count_neither_way(m, best_at):
    best = outcome(36, best_at=best_at)   # 0.9 at epoch best_at of 6
    short = outcome(4, ran=best_at - 1)   # ASHA stopped it at chance before that epoch
    # any number of short trials never make the search flat, and do not restart the count either
    assert flat_verdict(named([best] + [short] * 10), "max", m) is None
    assert [c for c, _ in flat_streaks(named([best] + [outcome(4, ran=best_at)] * (m - 1) + [short] * 5), "max")] \
        == [0] + list(range(1, m)) + [m - 1] * 5
    # as many epochs as the best took, or all of its own: counted
    assert flat_verdict(named([best] + [outcome(4, ran=best_at)] * m), "max", m) == (m, named([best])[0])
    assert flat_verdict(named([best] + [outcome(4, ran=EPOCHS, best_at=1)] * m), "max", m) is not None


def test_no_stop_before_the_start_up_trials_finished():
    flat = named([outcome(30)] * 6)   # every trial ties with the first: flat after trial 1 + M
    assert flat_verdict(flat, "max", 2, at_least=0)[0] == 2
    assert flat_verdict(flat[:4], "max", 2, at_least=5) is None
    assert flat_verdict(flat, "max", 2, at_least=5) == (4, flat[0])   # at the 5th trial, 4 in a row then
    assert flat_min_trials({"samples": 16, "sampler": "tpe"}) == 4 and flat_min_trials({"samples": 100, "sampler": "gp"}) == 10
    assert flat_min_trials({"samples": 16, "sampler": "random"}) == 0 and flat_min_trials({"samples": 8, "sampler": "qmc"}) == 0


def test_a_better_score_inside_the_interval_takes_the_lead_but_does_not_reset_the_count():
    finished = named([outcome(30), outcome(32), outcome(33)])   # 0.75, 0.80, 0.825: all inside 0.75's interval
    assert list(flat_streaks(finished, "max")) == [(0, finished[0]), (1, finished[1]), (2, finished[2])]
    assert beats_interval(0.99, 0.75, wilson(30, N), "max") and not beats_interval(float("inf"), 0.75, wilson(30, N), "max")
    assert beats_interval(0.2, 0.5, (0.4, 0.6), "min") and not beats_interval(0.45, 0.5, (0.4, 0.6), "min")
    assert beats_interval(0.51, 0.5, None, "max")   # no interval (an old trial): beyond the score itself


@pytest.mark.parametrize("value, expected", [
    ("0", ["search.stop_when_flat", "0 is not allowed", "integer >= 1"]),
    ("2.5", ["search.stop_when_flat", "wrong type"]),
    ("true", ["search.stop_when_flat", "wrong type"]),
    ("often", ["search.stop_when_flat", "wrong type"]),
    ("3, metric: val_loss", ["search.stop_when_flat", "val_loss is a loss", "stop_when_flat null"]),
])
def test_a_bad_stop_when_flat_names_the_key_and_what_is_allowed(tmp_path, value, expected):
    path = tmp_path / "space.yaml"
    path.write_text(f"search: {{stop_when_flat: {value}}}\nparams: {{model: cnn, lr: 1e-3}}\n")
    with pytest.raises(spaces.SpaceError) as err:
        spaces.load(path)
    message = str(err.value)
    assert all(part.lower() in message.lower() for part in expected) and "\n" not in message, message


def test_off_by_default_and_a_flag_sets_it(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("params: {model: cnn, lr: 1e-3}\n")
    assert spaces.load(path)["search"]["stop_when_flat"] is None
    assert spaces.load(path, overrides={"stop_when_flat": 4})["search"]["stop_when_flat"] == 4


FLAT_SPACE = """
search: {samples: 8, epochs: 2, grace_period: 2, scheduler: fifo, seed: 0, max_concurrent: 1, stop_when_flat: 2}
params:
  model: cnn
  image_size: 16
  batch_size: 16
  lr: {loguniform: [3e-3, 1e-2]}   # narrow: every trial learns the easy shapes, so the trials tie
"""


def test_a_search_whose_trials_tie_stops_after_m_and_resume_reruns_nothing(tiny_imagefolder, tmp_path):
    space, storage, name = tmp_path / "space.yaml", tmp_path / "runs", "flat"
    space.write_text(FLAT_SPACE)
    code, out, err = run_main(search, ["--space", str(space), "--data", str(tiny_imagefolder), "--storage",
                                       str(storage), "--name", name, "--set", f"cache_dir={tmp_path / 'cache'}"])
    assert code == 0, out[-3000:] + err[-3000:]
    table = pd.read_csv(storage / name / "trials.csv", dtype={"trial_id": str})
    rule = (r"2 trials in a row that ran the [12] epochs? (#\d+ \w+) took to its best \(or all theirs\) could not "
            r"beat its interval")
    line = re.search(f"stopped: {rule} \\(search.stop_when_flat 2: trials stopped sooner count neither way; no stop "
                     r"before 3 trials finished\); the running trials stop now", out)
    assert line, out[-3000:]
    named_best = re.search(f"Search stopped \\({rule}\\)", out)[1]
    assert "continue with" not in out and named_best == line[1]
    assert f"best trial   {named_best}:" in out, out[-3000:]   # the best the summary hands over, by the same rule
    finished = table[table.status == "TERMINATED"]
    assert 3 <= len(finished) and len(table) < 8, table   # the first sets the best, two tie, then it stops

    # --resume: the finished trials are not rerun, nothing new starts, and it says the same again
    before = {row.trial_id: iterations(row.path) for row in table.itertuples()}
    code, out, err = run_main(search, ["--resume", "--storage", str(storage), "--name", name])
    assert code == 0, out[-3000:] + err[-3000:]
    assert re.search(f"Search stopped \\({rule}\\)", out)[1] == named_best, out[-3000:]
    again = pd.read_csv(storage / name / "trials.csv", dtype={"trial_id": str})
    assert {row.trial_id: iterations(row.path) for row in again.itertuples()} == before
