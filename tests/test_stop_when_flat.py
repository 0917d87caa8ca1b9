"""search.stop_when_flat: the rule on sequences of finished trials (against an independent computation), the
setting's checks, and one real search that stops early and resumes without rerunning anything."""
import math
import re

import pandas as pd
import pytest
from hypothesis import given, strategies as st

from dogs.uncertainty import wilson
from tune import search, spaces
from tune.stop_when_flat import beats, streaks, verdict
from conftest import run_main
from test_search import iterations

N = 40   # validation images: a Wilson interval about +-0.15 wide, so that near scores tie


def outcome(k, n=N):
    """(score, interval) of a trial whose best epoch got k of n validation images right."""
    return k / n, wilson(k, n)


def named(outcomes):
    """(name, score, interval) per trial: the names in another order than the trials finished (as Tune's ids)."""
    return [(f"{(7 * i) % 31:02d}", score, bounds) for i, (score, bounds) in enumerate(outcomes)]


def counts_by_hand(finished, mode="max"):
    """The count after each trial, written out plainly: how many trials since the last one that beat the best of
    the trials before it (beyond its interval's better end; anything finite beats no best; NaN never beats)."""
    out = []
    for i, (_, score, _) in enumerate(finished):
        before = [(s, b) for _, s, b in finished[:i] if math.isfinite(s)]
        sign = 1 if mode == "max" else -1
        best = max(before, key=lambda o: sign * o[0], default=None)   # max keeps the first of equals
        edge = None if best is None else (best[1][1] if mode == "max" else best[1][0])
        beat = math.isfinite(score) and (best is None or sign * score > sign * edge)
        out.append(0 if beat else (out[-1] if out else 0) + 1)
    return out


scores = st.one_of(st.integers(0, N).map(outcome), st.just((float("nan"), None)))


@given(st.lists(scores, max_size=30))
def test_the_count_is_trials_since_the_last_that_beat_the_best_interval(outcomes):
    finished = named(outcomes)
    assert [count for count, _ in streaks(finished, "max")] == counts_by_hand(finished)


@given(st.lists(scores, max_size=30), st.integers(1, 6))
def test_the_verdict_comes_at_the_first_run_of_m_and_names_the_best_then(outcomes, m):
    finished = named(outcomes)
    counts = counts_by_hand(finished)
    found = verdict(finished, "max", m)
    first = next((i for i, c in enumerate(counts) if c >= m), None)
    assert (found is None) == (first is None)
    if found is not None:
        count, best = found
        assert count == m
        finite = [t for t in finished[:first + 1] if math.isfinite(t[1])]
        # the best as the summary names it: the best score, of equals the first by name (trial id)
        assert best == (min(finite, key=lambda t: (-t[1], t[0])) if finite else None)


@given(st.integers(0, N), st.integers(1, 5), st.integers(1, 8))
def test_ties_within_the_interval_stop_after_m_and_clear_gains_never_stop(k, m, length):
    # the same score again: within the best's interval, so M repeats after the first stop the search
    same = named([outcome(k)] * (m + 1))
    assert verdict(same, "max", m) == (m, min(same))
    # each score past the previous best's interval: never flat, whatever M
    rising, score = [], 0.0
    for _ in range(length):
        rising.append((f"{len(rising)}", score, (score - 0.01, score + 0.01)))
        score += 0.05
    assert verdict(rising, "max", 1) is None


def test_a_better_score_inside_the_interval_takes_the_lead_but_does_not_reset_the_count():
    finished = named([outcome(30), outcome(32), outcome(33)])   # 0.75, 0.80, 0.825: all inside 0.75's interval
    assert list(streaks(finished, "max")) == [(0, finished[0]), (1, finished[1]), (2, finished[2])]
    assert beats(0.99, 0.75, wilson(30, N), "max") and not beats(float("inf"), 0.75, wilson(30, N), "max")
    assert beats(0.2, 0.5, (0.4, 0.6), "min") and not beats(0.45, 0.5, (0.4, 0.6), "min")
    assert beats(0.51, 0.5, None, "max")   # no interval (an old trial): beyond the score itself


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
    assert "stopped: 2 trials in a row could not beat #" in out and "(search.stop_when_flat 2)" in out, out[-3000:]
    assert "Search stopped (2 trials in a row could not beat #" in out and "continue with" not in out
    named_best = re.search(r"Search stopped \(2 trials in a row could not beat (#\d+ \w+)'s interval\)", out)[1]
    assert f"best trial   {named_best}:" in out, out[-3000:]   # the best the summary hands over, by the same rule
    finished = table[table.status == "TERMINATED"]
    assert 3 <= len(finished) and len(table) < 8, table   # the first sets the best, two tie, then it stops

    # --resume: the finished trials are not rerun, nothing new starts, and it says the same again
    before = {row.trial_id: iterations(row.path) for row in table.itertuples()}
    code, out, err = run_main(search, ["--resume", "--storage", str(storage), "--name", name])
    assert code == 0, out[-3000:] + err[-3000:]
    assert "Search stopped (2 trials in a row could not beat #" in out, out[-3000:]
    again = pd.read_csv(storage / name / "trials.csv", dtype={"trial_id": str})
    assert {row.trial_id: iterations(row.path) for row in again.itertuples()} == before
