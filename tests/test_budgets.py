"""Time budgets (issue #17): any --time-budget is accepted (plain seconds too) or one line naming the flag; a
huge one is refused, not an OverflowError; a budget shorter than a trial's start-up still progresses. Issue #26:
the time left never above the budget left, a plan line before the search, a budget that ends at epoch boundaries
within an epoch of its end with every epoch counted, and trials' bars as clean lines in a log file."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from tune import spaces, search, settings
from conftest import run_main


@pytest.fixture
def no_ray(monkeypatch):
    """Ray must not start: a refused budget is refused before anything runs."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr("ray.init", refuse)


DURATIONS = st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from("smhd")), min_size=1, max_size=4)


@given(DURATIONS)
def test_a_duration_parses_to_its_documented_seconds(parts):
    text = "".join(f"{n}{unit}" for n, unit in parts)
    seconds = sum(n * settings.SECONDS[unit] for n, unit in parts)
    expected = seconds if 0 < seconds <= settings.MAX_BUDGET else None
    assert settings.parse_duration(text) == expected
    assert settings.parse_duration(str(seconds)) == expected   # a plain number: seconds


@given(st.one_of(st.text(max_size=30), st.from_regex(r"\d{1,30}(\.\d{0,3})?\s*[smhd]?", fullmatch=True)))
def test_any_time_budget_flag_is_accepted_or_one_line_naming_the_flag(text):
    seconds = settings.parse_duration(text)   # never raises
    assert seconds is None or 0 < seconds <= settings.MAX_BUDGET
    code, _, err = parse(text)
    if seconds is not None or text.strip().lower() in ("none", "null"):
        assert code is None, err
    else:
        assert code == 2 and err.splitlines()[-1].startswith("dogs-search: error: argument --time-budget: "), err


def parse(text):
    """(exit code or None, '', stderr) of parsing --time-budget=text."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            spaces.get_args_parser().parse_args([f"--time-budget={text}"])
            return None, "", err.getvalue()
        except SystemExit as stop:
            return stop.code, "", err.getvalue()


@pytest.mark.parametrize("text", ["99999999999s", "9" * 400, "400d"])
def test_a_huge_time_budget_is_one_line_before_anything_runs(text, tmp_path, no_ray):
    code, out, err = run_main(search, ["--space", "cnn_scratch.yaml", "--smoke-test", "--storage", str(tmp_path),
                                       "--time-budget", text])
    assert code == 2 and "argument --time-budget: " in err and "at most 365d" in err and "Traceback" not in err


def test_plain_seconds_are_a_time_budget_and_a_bad_one_names_the_flag(tmp_path, no_ray):
    args = spaces.get_args_parser().parse_args(["--space", "cnn_scratch.yaml", "--time-budget", "90"])
    space = spaces.space_from_args(args, None)
    assert settings.parse_duration(space["search"]["time_budget"]) == 90
    code, out, err = run_main(search, ["--space", "cnn_scratch.yaml", "--time-budget", "soon"])
    assert code == 2 and "argument --time-budget: 'soon' is not a duration" in err
    assert "cnn_scratch.yaml" not in err


def epochs_saved(exp_dir):
    """Distinct epochs every trial of the experiment has reported, in all (an epoch in flight at a stop may run again)."""
    return sum(len({json.loads(line)["training_iteration"] for line in (p / "result.json").read_text().splitlines()
                    if line.strip()}) for p in Path(exp_dir).glob("trial_*") if (p / "result.json").exists())


def test_a_budget_shorter_than_a_trials_start_still_progresses_on_every_resume(tiny_imagefolder, tmp_path):
    """--time-budget 1s (less than any trial's start-up): each session, the first one and each printed --resume
    (which applies the saved budget again), saves at least one more epoch, so repeating it finishes the search."""
    space = tmp_path / "space.yaml"
    space.write_text("search: {samples: 1, epochs: 2, grace_period: 2, max_concurrent: 1, seed: 0}\n"
                     "params: {model: cnn, image_size: 16, batch_size: 16, lr: {loguniform: [1e-3, 1e-2]}}\n")
    runs, name = tmp_path / "runs", "short"
    argv = ["--space", str(space), "--data", str(tiny_imagefolder), "--storage", str(runs), "--name", name,
            "--time-budget", "1s"]
    done = []
    for session in range(4):   # 1 trial x 2 epochs: at most 2 sessions when each saves an epoch
        code, out, err = run_main(search, argv)
        assert code == 0, out[-3000:] + err[-3000:]
        done.append(epochs_saved(runs / name))
        assert done[-1] > (done[-2] if len(done) > 1 else 0), f"session {session} saved no epoch: {done}\n{out[-2000:]}"
        if "continue with  python -m tune.search --resume" not in out:
            break
        assert "Time budget 1s used up" in out
        argv = ["--resume", "--storage", str(runs), "--name", name]   # the printed command: the saved 1s again
    assert done[-1] == 2 and len(done) <= 2, done


# ---- #26: estimates that know the budget; a budget that ends on time and throws nothing away; clean bars ----

SECONDS = st.floats(0, 1e7, allow_nan=False)


@given(SECONDS, st.one_of(st.none(), st.floats(-1e4, 1e7, allow_nan=False)))
def test_the_time_left_is_the_work_left_at_most_the_budget_left(work_s, budget_left_s):
    from tune.progress import time_left

    left = time_left(work_s, budget_left_s)
    if budget_left_s is None:
        assert left == work_s
    else:
        assert 0 <= left <= max(0.0, budget_left_s) and left <= work_s
        assert left == work_s or left == max(0.0, budget_left_s)


def test_the_progress_line_says_no_more_time_left_than_the_budget_has(monkeypatch):
    """20 trials x 40 epochs at 1 epoch per 10 s is hours of work; with 5 minutes of budget left the line says 5m."""
    from tune import progress

    class Running:   # what the progress line reads of a Tune trial
        trial_id, status, last_result = "a1", "RUNNING", {"training_iteration": 1, "best_val_acc": 0.5}

    callback = progress.ProgressCallback(20, 40, "val_acc", "max")
    callback._ran = 1
    assert callback.line([Running()], 10.0).endswith("| ~2h13m left")   # 799 epochs x 10 s / 1 slot
    monkeypatch.setattr(progress.ProgressCallback, "deadline", time.time() + 300)
    assert re.search(r"\| ~(4m5\ds|5m00s) left$", callback.line([Running()], 10.0))


@given(st.integers(1, 50), st.integers(1, 50), st.floats(0, 1e9), SECONDS, st.one_of(st.none(), st.floats(0, 2e9)))
def test_a_trial_stops_for_the_budget_only_before_an_epoch_that_would_end_after_it(epoch, epochs, now, longest_s,
                                                                                    deadline):
    from dogs.ray_trainable import out_of_budget

    stops = out_of_budget(epoch, epochs, now, longest_s, deadline)
    if deadline is None or epoch >= epochs:   # no budget, or its last epoch done: it ends as complete, never waits
        assert not stops
    else:
        assert stops == (now + longest_s > deadline)


@given(st.integers(1, 500), st.integers(1, 500), st.integers(1, 64), st.floats(0.01, 1e4),
       st.one_of(st.none(), st.floats(1, 1e6)))
def test_a_search_estimate_is_its_epochs_over_its_slots_at_most_the_budget(samples, epochs, slots, epoch_s, budget):
    from tune.progress import search_seconds

    work = samples * epochs * epoch_s / slots
    assert search_seconds(samples, epochs, slots, epoch_s, budget) == (work if budget is None else min(work, budget))


def test_the_plan_line_says_it_has_no_measurement_then_uses_the_one_kept(tmp_path, monkeypatch):
    import pandas as pd
    from tune import progress

    monkeypatch.setenv("DOGS_CACHE", str(tmp_path / "cache"))
    space = {"search": {"samples": 6, "epochs": 10, "cpus_per_trial": 1, "gpus_per_trial": 0, "holdout": 0,
                        "time_budget": "1m"}, "params": {"model": "cnn", "data": "/d", "lr": {"loguniform": [0.1, 1]}}}
    first = progress.plan_line(space, 2, "runs/x", 60)
    assert "Searching 6 trials x 10 epochs, 2 at a time; results in runs/x: no measurement yet" in first
    assert "at most the time budget 1m" in first
    progress.record(space, pd.DataFrame({"epochs": [4, 2], "time_s": [8.0, 4.0]}))   # 2 s per trial-epoch
    assert "about 1m00s (60 epochs at most) at 2.0 s per trial-epoch" in progress.plan_line(space, 2, "runs/x", 60)
    assert "about 20s (60 epochs at most)" in progress.plan_line(space, 6, "runs/x", None)
    other = dict(space, params=dict(space["params"], data="/other"))   # another data set: not measured
    assert "no measurement yet" in progress.plan_line(other, 2, "runs/x", None)


BUDGET_S = 60


@pytest.fixture(scope="module")
def budgeted(tiny_imagefolder, tmp_path_factory):
    """A budgeted search run as a user runs it, its output to a file: 3 trials of 400 short epochs, 2 at a time,
    under a 60 s budget (far less than they need; a loaded machine may take half of it to start Ray)."""
    root = tmp_path_factory.mktemp("budgeted")
    space = root / "space.yaml"
    space.write_text("search: {samples: 3, epochs: 400, grace_period: 400, max_concurrent: 2, scheduler: fifo, "
                     "seed: 0}\n"
                     "params: {model: cnn, image_size: 20, batch_size: 16, lr: {loguniform: [1e-3, 1e-2]}}\n")
    runs, log = root / "runs", root / "console.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    start = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-m", "tune.search", "--space", str(space), "--data",
                               str(tiny_imagefolder), "--storage", str(runs), "--name", "b", "--time-budget",
                               f"{BUDGET_S}s"], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=600,
                              cwd=Path(__file__).parents[1]).returncode
    return {"code": code, "wall_s": time.monotonic() - start, "out": log.read_text(), "dir": runs / "b"}


def results(trial_dir):
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def test_a_budget_ends_on_time_at_epoch_boundaries_with_every_epoch_counted(budgeted):
    """Within the budget plus the longest epoch (and the start and stop of Ray on a loaded machine); each trial cut
    by the budget stopped at an epoch it chose not to pass (no epoch in flight thrown away); trials.csv and the
    Optuna study count every epoch reported; none of Ray's stop-signal lines."""
    import pandas as pd
    from tune.study import open_study

    out, exp_dir = budgeted["out"], budgeted["dir"]
    assert budgeted["code"] == 0, out[-3000:]
    assert f"Time budget {BUDGET_S}s used up" in out and "Stop signal received" not in out, out[-3000:]
    assert "no measurement yet" in out.split("Searching 3 trials x 400 epochs", 1)[1].splitlines()[0]
    trials = {p.name.removeprefix("trial_"): results(p) for p in exp_dir.glob("trial_*") if (p / "result.json").exists()}
    longest = max(r["time_this_iter_s"] for rs in trials.values() for r in rs)
    assert budgeted["wall_s"] <= BUDGET_S + longest + 90, (budgeted["wall_s"], longest)
    table = pd.read_csv(exp_dir / "trials.csv")
    with open_study(exp_dir) as study:
        steps = {t.number: len(t.intermediate_values) for t in study.trials}
    for row in table.itertuples():
        epochs = sorted(r["training_iteration"] for r in trials[row.trial_id])
        assert epochs == list(range(1, row.epochs + 1)) and steps[row.number] == row.epochs, row
        if row.status == "UNFINISHED":   # cut by the budget: at an epoch boundary it chose not to pass
            assert trials[row.trial_id][-1]["budget_spent"], row
    assert (table.status == "UNFINISHED").any() and table.epochs.sum() > 0


def test_trial_progress_bars_are_whole_clean_lines_in_a_log_file(budgeted):
    """The trials' decode bar in a file: no escape codes or carriage returns, no Ray `(pid=...)` prefix, one bar
    per line."""
    out = budgeted["out"]
    assert "\x1b" not in out and "\r" not in out and "pid=" not in out, out[-3000:]
    bars = [line for line in out.splitlines() if "images at 20px (once)" in line]
    assert bars and all(line.count("(once)") == 1 for line in bars), bars
    assert any(re.fullmatch(r"decoding (\d+) images at 20px \(once\): \1/\1 img in [\d.]+ s", line) for line in bars), bars
