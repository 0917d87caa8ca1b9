"""tune.study_searcher.StudySearcher driven by synthetic Tune calls, no Ray cluster: every state the study can hold
(COMPLETE, PRUNED, FAIL), intermediate values, first trials, conditional parameters, seeding, and the
state a killed driver leaves behind settled by save/restore (as Tune's --resume calls them)."""
import pickle
import shutil
import signal
import tempfile
from pathlib import Path

import optuna
import pytest

from tune import spaces
from dogs.errors import ExperimentError
from tune.study_searcher import StudySearcher, make_sampler, startup_trials
from tune.callbacks import SearchSession, restoring
from tune.study import abandoned_trial_ids, open_study, sqlite_path

SPACE = {
    "search": {"samples": 8, "epochs": 3, "seed": 0},
    "params": {
        "model": {"choice": ["cnn", "resnet18"]},
        "unfreeze": {"int": [0, 3], "when": {"model": "resnet18"}},    # exists only for the ResNet
        "lr": {"loguniform": [1e-4, 1e-2]},
        "image_size": 32,
    },
    "first_trials": [{"model": "resnet18", "unfreeze": 2, "lr": 1e-3}],
}
MAX_T = 3


def make(exp_dir, sampler="tpe", seed=0, optuna_storage=None):
    space = spaces.validate(SPACE)
    return StudySearcher(space["params"], "best_val_acc", "max", max_t=MAX_T, exp_dir=str(exp_dir), sampler=sampler,
                         seed=seed, samples=8, first_trials=space["first_trials"], optuna_storage=optuna_storage)


@pytest.fixture
def tmp_path():
    """A folder in memory where the machine has one (/dev/shm): SQLite's fsync per write is the slow part."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="dogs-searcher-", dir=shm if shm.is_dir() else None))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def db(tmp_path):
    """One SQLite database (--optuna-storage) for searches that need no study.db of their own: each search
    is a study named after its experiment."""
    return f"sqlite:///{tmp_path / 'studies.db'}"


def result(step, score):
    return {"training_iteration": step, "best_val_acc": score}


def by_tune_id(study):
    return {t.user_attrs["tune_trial_id"]: t for t in study.trials if "tune_trial_id" in t.user_attrs}


def test_every_state_intermediate_values_first_trials_and_conditions(tmp_path, db):
    searcher = make(tmp_path / "states", optuna_storage=db)
    configs = {t: searcher.suggest(t) for t in ("a", "b", "c", "d")}
    assert configs["a"] == {"model": "resnet18", "unfreeze": 2, "lr": 1e-3, "image_size": 32}   # first_trials
    for config in configs.values():
        assert ("unfreeze" in config) == (config["model"] == "resnet18") and config["image_size"] == 32
    # a: all epochs -> COMPLETE with its final best_val_acc, the last epoch an intermediate value too
    searcher.on_trial_result("a", result(1, 0.5))
    searcher.on_trial_result("a", result(2, 0.7))
    searcher.on_trial_result("a", result(2, 0.7))          # a repeated epoch is reported once
    searcher.on_trial_complete("a", result(3, 0.8))
    # b: ASHA stopped it at epoch 2 (Tune gives that last result to on_trial_complete only) -> PRUNED
    searcher.on_trial_result("b", result(1, 0.2))
    searcher.on_trial_complete("b", result(2, 0.3))
    # c: errored after its retries -> FAIL; d: a score that is not a number -> FAIL
    searcher.on_trial_result("c", result(1, 0.4))
    searcher.on_trial_complete("c", error=True)
    searcher.on_trial_complete("d", result(3, float("nan")))

    trials = by_tune_id(searcher.study)
    assert trials["a"].state.name == "COMPLETE" and trials["a"].value == 0.8
    assert trials["a"].intermediate_values == {1: 0.5, 2: 0.7, 3: 0.8}
    assert trials["b"].state.name == "PRUNED" and trials["b"].intermediate_values == {1: 0.2, 2: 0.3}
    assert trials["c"].state.name == "FAIL" and trials["d"].state.name == "FAIL"
    assert {n: t.params for n, t in trials.items()} == {
        n: {k: v for k, v in c.items() if k != "image_size"} for n, c in configs.items()}
    assert searcher.study.metric_names == ["best_val_acc"]


def test_same_seed_same_proposals_other_seed_others(tmp_path, db):
    searchers = [make(tmp_path / f"seed{i}", seed=seed, optuna_storage=db) for i, seed in ((0, 0), (1, 0), (2, 1))]
    proposals = [[searcher.suggest(t) for t in ("x", "y", "z")] for searcher in searchers]
    assert proposals[0] == proposals[1] != proposals[2]


def test_driver_killed_then_resumed(tmp_path):
    exp_dir = tmp_path / "exp"
    searcher = make(exp_dir)
    pickled = pickle.dumps(searcher)                        # tuner.pkl: Tune pickles the searcher it was given
    for t in ("a", "b", "c"):
        searcher.suggest(t)
    searcher.on_trial_complete("a", result(3, 0.9))
    searcher.on_trial_complete("b", error=True)
    searcher.on_trial_result("c", result(1, 0.4))
    searcher.save(str(tmp_path / "searcher-state-1.pkl"))   # Ray saves its state (a, b, c) ...
    orphan = searcher.suggest("d")                          # ... then asks two more trials and the driver dies
    searcher.suggest("e")
    searcher.on_trial_result("e", result(1, 0.1))
    searcher.on_trial_result("c", result(2, 0.5))

    # --resume: Tune unpickles the searcher and restores it from its saved state
    resumed = pickle.loads(pickled)
    resumed.restore(str(tmp_path / "searcher-state-1.pkl"))
    before = {t.number: t.state.name for t in resumed.study.trials}
    assert before[by_tune_id(resumed.study)["e"].number] == "FAIL"      # it ran, and Ray will not resume it
    assert resumed.suggest("f") == orphan                                # d never reported: f takes it over
    assert abandoned_trial_ids(resumed.study) == {"d", "e"}              # their folders are no trials any more
    resumed.on_trial_result("c", result(2, 0.5))                         # c continues from its checkpoint
    resumed.on_trial_complete("c", result(3, 0.6))
    resumed.on_trial_result("b", result(2, 0.3))                         # b errored: --resume retries it
    resumed.on_trial_complete("b", result(3, 0.7))
    resumed.on_trial_complete("f", result(1, 0.2))
    resumed.on_trial_complete("a", result(3, 0.9))                       # finished before: stays as it was

    trials = resumed.study.trials
    assert "RUNNING" not in {t.state.name for t in trials}
    c = by_tune_id(resumed.study)["c"]
    assert c.state.name == "COMPLETE" and c.intermediate_values == {1: 0.4, 2: 0.5, 3: 0.6}
    retry = [t for t in trials if "retry_of" in t.user_attrs]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].value == 0.7
    assert trials[retry[0].user_attrs["retry_of"]].state.name == "FAIL"
    assert retry[0].params == trials[retry[0].user_attrs["retry_of"]].params
    assert [t.user_attrs["tune_trial_id"] for t in trials if t.state.name == "PRUNED"] == ["f"]
    assert len([t for t in trials if t.state.name == "COMPLETE"]) == 2 + 1   # a, c and b's retry

    # readers find the study from the experiment's saved state
    (exp_dir / "searcher-state-1.pkl").write_text((tmp_path / "searcher-state-1.pkl").read_text())
    with open_study(exp_dir) as study:
        assert len(study.trials) == len(trials)


def test_a_moved_experiment_continues_the_study_where_its_session_says(tmp_path):
    """--resume of a moved (or copied) experiment: tuner.pkl names the old folder; the searcher Ray unpickles inside
    tune.ray_tuner.restore_tuner takes that call's session and continues the study.db of the folder the session names."""
    old, new = tmp_path / "old" / "exp", tmp_path / "new" / "exp"
    searcher = make(old)
    pickled = pickle.dumps(searcher)                        # tuner.pkl names the old folder
    searcher.suggest("a")
    searcher.on_trial_complete("a", result(3, 0.9))
    searcher.save(str(old / "searcher-state-1.pkl"))
    shutil.move(old.parent, new.parent)                     # nothing left at the old place

    with restoring(SearchSession(exp_dir=str(new))):
        resumed = pickle.loads(pickled)
    resumed.restore(str(new / "searcher-state-1.pkl"))
    assert sqlite_path(resumed.study_url) == (new / "study.db").resolve()
    assert [t.user_attrs["tune_trial_id"] for t in resumed.study.trials] == ["a"]
    alone = pickle.loads(pickled)                           # outside a restore: the folder tuner.pkl names, gone
    with pytest.raises(ExperimentError, match="study is missing"):
        alone.restore(str(new / "searcher-state-1.pkl"))


def test_a_lost_database_stops_its_own_search_and_says_why_in_its_session(tmp_path, db, monkeypatch):
    """The study's database gone mid-search: the searcher stops Tune as on Ctrl-C (SIGUSR1), keeps the call it could
    not write, proposes no more trials, and says why in its session, which tune.search prints; another search in
    the same process is not stopped by it."""
    first, other = make(tmp_path / "first", optuna_storage=db), make(tmp_path / "other", optuna_storage=db)
    first.suggest("a")
    other.suggest("x")

    def unreachable(value, step):
        raise optuna.exceptions.StorageInternalError("server closed the connection unexpectedly")

    monkeypatch.setattr(first._trials["a"], "report", unreachable)
    stops = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: stops.append(1))   # Tune's graceful stop
    try:
        first.on_trial_result("a", result(1, 0.5))
        first.on_trial_result("a", result(2, 0.6))          # once lost, kept without asking the database again
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert stops == [1]
    assert first.session.lost.startswith("the Optuna study's database") and "closed the connection" in first.session.lost
    assert first.unwritten == [["_report", "a", [1, 0.5]], ["_report", "a", [2, 0.6]]]
    assert first.suggest("b") is None
    assert other.session.lost is None and other.suggest("y") is not None


def test_a_second_search_of_the_same_name_is_refused(tmp_path, db):
    from dogs.errors import UserError

    make(tmp_path / "twice", optuna_storage=db)
    with pytest.raises(UserError, match="already exists"):
        make(tmp_path / "twice", optuna_storage=db)


@pytest.mark.parametrize("name", ["tpe", "random", "qmc", "gp"])
def test_samplers(name):
    sampler = make_sampler(name, 0, 20)
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    assert startup_trials(8) == 3 and startup_trials(24) == 6 and startup_trials(400) == 10


def test_sampler_and_scheduler_flags_are_settings(tmp_path):
    from tune import spaces

    path = tmp_path / "space.yaml"
    path.write_text("search: {sampler: random}\nparams: {lr: {loguniform: [1e-4, 1e-2]}}\n")
    args = spaces.get_args_parser().parse_args(["--space", str(path), "--scheduler", "fifo"])
    assert {k: spaces.space_from_args(args, None)["search"][k] for k in ("sampler", "scheduler")} == \
        {"sampler": "random", "scheduler": "fifo"}
    args = spaces.get_args_parser().parse_args(["--space", str(path), "--sampler", "gp"])
    assert spaces.space_from_args(args, None)["search"]["sampler"] == "gp"


def test_small_validation_split_warns_when_asha_ranks_by_early_epochs(tmp_path):
    from conftest import make_imagefolder
    from tune import report

    data = make_imagefolder(tmp_path / "data", n_train=4, n_val=5, n_test=0, awkward=False)
    settings = {"scheduler": "asha", "grace_period": 1, "epochs": 4}
    warning = report.small_validation_warning(data, settings)
    assert "5 image(s) in its smallest class (15 in all)" in warning and "--scheduler fifo" in warning
    assert report.small_validation_warning(data, {**settings, "scheduler": "fifo"}) is None
    assert report.small_validation_warning(data, {**settings, "grace_period": 4}) is None   # ASHA stops nothing


def test_weights_missing_from_the_hub_cache_are_one_error_before_the_search_starts(tmp_path, monkeypatch):
    # was a warning, then every trial raised WeightsError and was retried (~1,270 traceback lines, issue #24)
    import torch

    from dogs.errors import WeightsError
    from tune import report

    def offline(url, dst, *args, **kwargs):
        tried.append(url)
        raise OSError("network unreachable")
    tried = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    space = spaces.load(spaces.find_space_file("resnet_frozen.yaml"))   # model: resnet18 | resnet34 | resnet50
    with pytest.raises(WeightsError) as err:
        report.check_weights(space)
    message = str(err.value)
    assert f"missing from {hub} and their download failed (OSError: network unreachable)" in message
    assert "resnet18-f37072fd.pth for resnet18 weights=DEFAULT; resnet34-b627a593.pth" in message
    assert "python -m dogs.weights install MODEL --from FILE" in message and "\n" not in message
    assert len(tried) == 3   # each file tried once, by the driver (with internet the trials find them there)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"not torchvision's file")   # present, but not the right file
    with pytest.raises(WeightsError, match="resnet18-f37072fd.pth is not the file torchvision publishes"):
        report.check_weights(space)
    for weights in ("none", str(tmp_path / "mine.pth")):   # random init, or a file of one's own: no hub file needed
        space = spaces.load(spaces.find_space_file("resnet_frozen.yaml"), sets={"weights": weights})
        assert report.check_weights(space) is None
    assert report.check_weights(spaces.load(spaces.find_space_file("cnn_scratch.yaml"))) is None


@pytest.mark.parametrize("name", ["tpe", "random", "qmc", "gp"])
def test_integer_parameters_stay_integers_with_every_sampler(tmp_path, db, name):
    """GPSampler proposes an integer as a float (0.0); a trial's config (params.json, trials.csv, the summary)
    has the int that suggest_int returns, with every sampler and past the random start-up trials."""
    space = spaces.validate({"params": {"model": "resnet18", "unfreeze": {"int": [0, 4]},
                                        "head_width": {"qrandint": [0, 64, 16]}, "lr": {"loguniform": [1e-4, 1e-2]}}})
    searcher = StudySearcher(space["params"], "best_val_acc", "max", max_t=MAX_T, exp_dir=str(tmp_path / name),
                             sampler=name, seed=0, samples=8, optuna_storage=db)
    for i in range(startup_trials(8) + 2):
        config = searcher.suggest(f"t{i}")
        assert type(config["unfreeze"]) is int and type(config["head_width"]) is int, config
        assert type(config["lr"]) is float
        searcher.on_trial_complete(f"t{i}", result(MAX_T, config["unfreeze"] / 4 + config["lr"]))
