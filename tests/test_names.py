"""Experiment names (issue #17): one rule, checked before anything runs; no name escapes --storage or the study's
URL; tune.best --experiment NAME resolves in --storage, and a folder of that name here too is one line."""
from pathlib import Path

import pytest
import sqlalchemy
from hypothesis import given, strategies as st

from tune import experiment, search, storage, study
from tune.experiment import MAX_NAME, default_name, name_problem
from conftest import run_main

BAD_NAMES = ["..", ".", "%2E%2E", "a/b", "../x", "#", "a#b", "%20", "a b", "a b#c%20", "hund\u00e9", "\U0001f436",
             "", "x" * (MAX_NAME + 1), "-x", ".hidden", "a\nb", "a\\b", "a?b=1"]


@pytest.fixture
def no_ray(monkeypatch):
    """Ray must not start: a refused name is refused before anything runs."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr("ray.init", refuse)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_could_escape_storage_is_one_line_before_anything_runs(name, tmp_path, no_ray, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "inner" / "runs"
    for argv in (["--space", "cnn_scratch.yaml", "--smoke-test"], ["--resume"]):
        code, out, err = run_main(search, [*argv, "--storage", str(runs), f"--name={name}"])
        assert code == 2, out + err
        assert err.startswith("dogs-search: error: --name: ") and err.count("\n") == 1, err
        assert "allowed: 1 to 100 characters" in err
    assert list(tmp_path.rglob("*")) == [], "a refused name wrote something"


@given(st.text(max_size=120))
def test_every_name_is_accepted_into_its_own_folder_and_study_or_refused_in_one_line(name):
    why = name_problem(name)
    if why is None:   # its folder is right inside --storage, and the study's SQLite URL names that folder
        runs = Path("/tmp/runs")
        exp_dir = storage.join(runs, name)
        assert Path(exp_dir).parent == runs and storage.name(exp_dir) == name
        db = Path(exp_dir, study.STUDY_FILE)
        assert sqlalchemy.engine.make_url(study.sqlite_url(db)).database == str(db.resolve())
        assert len(name) <= MAX_NAME
    else:
        assert "\n" not in why and why.endswith("starting with a letter or digit")
        code, out, err = run_main(search, [f"--name={name}", "--storage", "/nonexistent/runs"])
        assert code == 2 and err.count("\n") == 1 and "--name: " in err


def test_accepted_names_are_exactly_the_rule():
    for name in ["e2", "a.b_c-1", "Resnet18.v2", "x" * MAX_NAME, "2026-12-04_run"]:
        assert name_problem(name) is None, name


@given(st.text(max_size=300))
def test_the_default_name_of_any_space_file_name_is_a_name(stem):
    assert name_problem(default_name(stem, "20261204-225900")) is None


def make_experiment(folder):
    folder.mkdir(parents=True)
    (folder / "search_space.yaml").write_text("search: {}\n")
    return folder


def test_best_experiment_name_resolves_in_storage_and_an_ambiguity_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "S"
    in_storage = make_experiment(runs / "e2")
    assert Path(experiment.locate("e2", str(runs))) == in_storage           # only in the storage
    here = make_experiment(tmp_path / "e2")                                  # and a folder ./e2 here
    with pytest.raises(Exception) as caught:
        experiment.locate("e2", str(runs))
    assert str(in_storage) in str(caught.value) and str(here) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert Path(experiment.locate("./e2", str(runs))) == here               # a path is a path
    assert Path(experiment.locate(str(in_storage), str(runs))) == in_storage
    only_here = make_experiment(tmp_path / "e3")
    assert Path(experiment.locate("e3", str(runs))) == only_here           # not in the storage: the folder
