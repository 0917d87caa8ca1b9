"""Time budgets (issue #17): any --time-budget is accepted (plain seconds too) or one line naming the flag; a
huge one is refused, not an OverflowError; a budget shorter than a trial's start-up still progresses."""
import contextlib
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from tune import cli, search, settings
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
            cli.get_args_parser().parse_args([f"--time-budget={text}"])
            return None, "", err.getvalue()
        except SystemExit as stop:
            return stop.code, "", err.getvalue()


@pytest.mark.parametrize("text", ["99999999999s", "9" * 400, "400d"])
def test_a_huge_time_budget_is_one_line_before_anything_runs(text, tmp_path, no_ray):
    code, out, err = run_main(search, ["--space", "cnn_scratch.yaml", "--smoke-test", "--storage", str(tmp_path),
                                       "--time-budget", text])
    assert code == 2 and "argument --time-budget: " in err and "at most 365d" in err and "Traceback" not in err


def test_plain_seconds_are_a_time_budget_and_a_bad_one_names_the_flag(tmp_path, no_ray):
    args = cli.get_args_parser().parse_args(["--space", "cnn_scratch.yaml", "--time-budget", "90"])
    space = cli.load_space(args, None)
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
