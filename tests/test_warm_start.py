"""--warm-start: which old trials seed the new study (a property over distributions, against Optuna's own equality),
the one line, the errors before Ray starts, and a small real search warm-started from a small real experiment."""
import functools
import re

import optuna
import pandas as pd
import pytest
from hypothesis import given, strategies as st
from optuna.trial import TrialState

from dogs.errors import UserError
from tune import space_values, report, search, warm_start
from tune.study import open_study
from conftest import run_main

# entries a param can have: small pools so that old and new often agree; int [1, 10] and randint [1, 11] are
# the same Optuna distribution, choice [8, 16] and [16, 8] are not (Optuna compares the choices in order)
ENTRIES = [("loguniform", [1e-5, 1e-1]), ("loguniform", [1e-4, 1e-1]), ("uniform", [0.0, 0.7]),
           ("quniform", [0.0, 0.7, 0.1]), ("int", [1, 10]), ("randint", [1, 11]), ("qrandint", [0, 64, 16]),
           ("lograndint", [1, 64]), ("choice", [8, 16]), ("choice", [16, 8]), ("choice", [8, 16, 32]),
           ("fixed", 0.5)]
NAMES = ("lr", "dropout", "batch_size")
STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def param(name, entry, when=None):
    kind, args = entry
    return {"name": name, "kind": kind, "args": args, "when": when or {}}


def space_of(entries):
    """A space's params from {name: entry index or None (absent)}."""
    return [param(name, ENTRIES[i]) for name, i in entries.items() if i is not None]


def old_study(params, states, seed):
    """An in-memory study with one trial per state, drawn from `params` by the search's own suggest."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    for k, state in enumerate(states):
        trial = study.ask()
        space_values.assign(params, functools.partial(space_values.suggest, trial))
        if state == TrialState.PRUNED:
            trial.report(0.1 * k, 1)
        study.tell(trial, 0.5 + 0.01 * k if state == TrialState.COMPLETE else None, state=state)
    return study


def drawn_by_new_space(params):
    """What a trial of the new space draws (unconditional params): Optuna's distributions of one real trial."""
    study = optuna.create_study()
    trial = study.ask()
    space_values.assign(params, functools.partial(space_values.suggest, trial))
    return trial.distributions


space_entries = st.fixed_dictionaries({name: st.one_of(st.none(), st.integers(0, len(ENTRIES) - 1))
                                       for name in NAMES})


@given(old=space_entries, new=space_entries, states=st.lists(st.sampled_from(STATES), min_size=1, max_size=6),
       seed=st.integers(0, 1000))
def test_a_finished_trial_is_taken_exactly_when_the_new_space_draws_its_params_alike(old, new, states, seed):
    """Taken: finished (COMPLETE or PRUNED) and its {name: distribution} equal (Optuna's ==) to what a trial of
    the new space draws; every other finished trial skipped, with a reason naming a param; taken trials copied
    whole (state, value, params, per-epoch values) into a new study by Optuna's add_trials."""
    old_params, new_params = space_of(old), space_of(new)
    study = old_study(old_params, states, seed)
    taken, skipped = warm_start.split_compatible(study.trials, new_params)

    now = drawn_by_new_space(new_params)
    finished = [t for t in study.trials if t.state in warm_start.FINISHED]
    assert [t.number for t in taken] == [t.number for t in finished if t.distributions == now]
    assert len(taken) + sum(skipped.values()) == len(finished)
    for why in skipped:   # each reason names a param of one of the spaces
        assert re.match(rf"({'|'.join(NAMES)}) (is new|distribution differs|is fixed|is not searched)", why), why

    fresh = optuna.create_study(direction="maximize")
    fresh.add_trials(warm_start.seeds(taken, "old"))
    assert [(t.state, t.values, t.params, t.intermediate_values) for t in fresh.trials] == \
           [(t.state, t.values, t.params, t.intermediate_values) for t in taken]
    assert all(t.user_attrs == {warm_start.WARM_ATTR: f"old #{o.number}"} for t, o in zip(fresh.trials, taken))
    said = warm_start.line(taken, len(finished), skipped, "old")
    assert said.startswith(f"Warm start: {len(taken)} of {len(finished)} finished trials of old")
    assert ("skipped" in said) == bool(skipped) and "\n" not in said


def test_conditional_params_are_walked_with_the_old_trials_values():
    """momentum exists only for sgd: with its range changed, the sgd trials are skipped and the adam ones taken."""
    optimizer = param("optimizer", ("choice", ["adam", "sgd"]))
    old = [optimizer, param("momentum", ("uniform", [0.0, 0.9]), when={"optimizer": ["sgd"]})]
    new = [optimizer, param("momentum", ("uniform", [0.5, 0.99]), when={"optimizer": ["sgd"]})]
    study = old_study(old, [TrialState.COMPLETE] * 12, seed=1)
    taken, skipped = warm_start.split_compatible(study.trials, new)
    assert {t.params["optimizer"] for t in taken} == {"adam"}
    sgd = sum(t.params["optimizer"] == "sgd" for t in study.trials)
    assert 0 < sgd < 12 and skipped == {"momentum distribution differs (old float 0..0.9, now float 0.5..0.99)": sgd}
    taken, skipped = warm_start.split_compatible(study.trials, old)
    assert len(taken) == 12 and not skipped


def study_url(tmp_path, *names, metric="best_val_acc", direction="maximize"):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    for name in names:
        study = optuna.create_study(storage=url, study_name=name, direction=direction)
        study.set_metric_names([metric])
        study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=3)
    return url


SEARCH = {"metric": "val_acc", "mode": "max", "epochs": 3, "sampler": "tpe"}
SPACE = {"search": SEARCH, "params": [param("lr", ("loguniform", [1e-4, 1e-1]))]}


def test_a_study_url_seeds_and_bad_sources_are_one_clear_error(tmp_path):
    url = study_url(tmp_path, "a")
    trials, said = warm_start.load_trials(url, tmp_path, SPACE)   # one study: no #name needed
    assert len(trials) == 3 and said.startswith("Warm start: 3 of 3 finished trials of sqlite:///") and "#a" in said
    study_url(tmp_path, "b")
    assert len(warm_start.load_trials(f"{url}#b", tmp_path, SPACE)[0]) == 3

    def error(source, space=SPACE):
        with pytest.raises(UserError) as err:
            warm_start.load_trials(source, tmp_path / "runs", space)
        assert "\n" not in str(err.value) and str(err.value).startswith("--warm-start")
        return str(err.value)

    assert "holds 2 studies ('a', 'b'); name one" in error(url)
    assert "no such file" in error(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()   # nothing created
    assert "cannot read the Optuna study 'c'" in error(f"{url}#c")
    assert "no such folder here, and no experiment" in error("nothing-here")
    (tmp_path / "not.db").write_text("not a database")
    assert "cannot read its Optuna studies" in error(f"sqlite:///{tmp_path / 'not.db'}")
    mode_min = {**SPACE, "search": {**SEARCH, "mode": "min"}}
    said = error(f"{url}#a", mode_min)
    assert "scores trials by 'best_val_acc' (maximize), this search by 'best_val_acc' (minimize)" in said
    other = {**SPACE, "search": {**SEARCH, "metric": "val_loss", "mode": "min"}}
    assert "this search by 'best_val_loss'" in error(f"{url}#a", other)
    wider = {**SPACE, "params": [param("lr", ("loguniform", [1e-5, 1e-1]))]}
    assert "none of its 3 finished trials fits this space (3 lr distribution differs" in error(f"{url}#a", wider)



def test_the_line_notes_other_fixed_values_other_epochs_and_a_sampler_that_does_not_learn():
    """Optuna's distributions do not hold the fixed values (model, data): a difference there is said in the line."""
    study = optuna.create_study()
    study.set_user_attr("max_t", 6)
    old = {"search": SEARCH, "params": [param("model", ("fixed", "resnet18")), param("data", ("fixed", "/a")),
                                        param("lr", ("fixed", 0.1))]}
    new = {"search": {**SEARCH, "sampler": "random"},
           "params": [param("model", ("fixed", "cnn")), param("data", ("fixed", "/a")),
                      param("lr", ("uniform", [0.0, 1.0]))]}
    assert warm_start.notes(study, old, new) == ["fixed values differ: model (old 'resnet18', now 'cnn')",
                                                 "its trials ran up to 6 epochs, this search's run 3",
                                                 "sampler random does not learn from trials: they change no proposal"]
    study.set_user_attr("max_t", 3)
    assert warm_start.notes(study, old, {**old}) == [] and warm_start.notes(study, None, old) == []


SEARCH_SPACE = """
search: {{samples: {samples}, epochs: 2, grace_period: 2, seed: {seed}, max_concurrent: 1}}
params:
  model: cnn
  image_size: 16
  batch_size: 16
  lr: {{loguniform: [1e-4, 3e-2]}}
  head_width: {{choice: [0, 32]}}
"""


@pytest.mark.timeout(600)
def test_a_search_warm_started_from_an_experiment_runs_only_its_own_trials_and_resume_adds_none(tiny_imagefolder,
                                                                                                tmp_path):
    """The old experiment's 3 finished trials seed the new study (not trained, not in trials.csv, not in
    --samples); the summary counts them apart; --resume of the warm-started search adds them no second time;
    --resume --warm-start is refused in one line."""
    runs = tmp_path / "runs"

    def run(name, samples, seed, *extra):
        space = tmp_path / f"{name}.yaml"
        space.write_text(SEARCH_SPACE.format(samples=samples, seed=seed))
        return run_main(search, ["--space", str(space), "--data", str(tiny_imagefolder), "--storage", str(runs),
                                 "--name", name, "--set", f"cache_dir={tmp_path / 'cache'}", *extra])

    code, out, err = run("old", 3, 0)
    assert code == 0, out[-3000:] + err[-3000:]
    loss = {"search": {**SEARCH, "metric": "val_loss", "mode": "min"}, "params": []}   # its saved space says first
    with pytest.raises(UserError, match=r"ranked trials by val_acc \(max\), this one by val_loss \(min\)"):
        warm_start.load_trials("old", runs, loss)
    code, out, err = run("new", 2, 1, "--warm-start", "old")
    assert code == 0, out[-3000:] + err[-3000:]
    assert f"Warm start: 3 of 3 finished trials of {runs / 'old'} seed the study" in out
    table = pd.read_csv(runs / "new" / "trials.csv", dtype={"trial_id": str})
    assert len(table) == 2 and sorted(table.number) == [3, 4]   # its own trials, after the 3 given ones
    assert len(list((runs / "new").glob("trial_*"))) == 2        # the old trials trained no second time
    assert "'WARM_START': 3" in out
    with open_study(runs / "old") as study:
        old = [(t.params, t.value, t.state) for t in study.trials]
    with open_study(runs / "new") as study:
        given_trials = [t for t in study.trials if warm_start.WARM_ATTR in t.user_attrs]
        assert [(t.params, t.value, t.state) for t in given_trials] == old and len(study.trials) == 5

    code, out, err = run_main(search, ["--resume", "--storage", str(runs), "--name", "new", "--warm-start", "old"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--warm-start with --resume" in err, err
    code, out, err = run_main(search, ["--resume", "--storage", str(runs), "--name", "new"])
    assert code == 0, out[-3000:] + err[-3000:]
    assert report.study_states(runs / "new") == {"WARM_START": 3, "COMPLETE": 2}   # grace 2 = epochs: none pruned
    with open_study(runs / "new") as study:
        assert sum(warm_start.WARM_ATTR in t.user_attrs for t in study.trials) == 3 and len(study.trials) == 5
