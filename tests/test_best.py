"""tune.best: the best trial of an experiment, predictions from its checkpoint or from a retrained config."""
import json
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, strategies as st

from dogs.errors import ExperimentError
from tune import best, search
from conftest import TWO_TRIAL_SPACE as SPACE, run_main



@pytest.fixture(scope="module")
def experiment(tiny_imagefolder, tmp_path_factory):
    """A finished 2-trial search in its own storage folder."""
    folder = tmp_path_factory.mktemp("best")
    (folder / "space.yaml").write_text(SPACE)
    storage = folder / "runs"
    code, out, err = run_main(search, ["--space", str(folder / "space.yaml"), "--data", str(tiny_imagefolder),
                                       "--storage", str(storage), "--name", "b"])
    assert code == 0, out[-3000:] + err[-3000:]
    return {"storage": storage, "dir": storage / "b", "data": tiny_imagefolder}


def val_acc_by_trial_and_epoch(exp_dir):
    """{(trial_id, epoch): val_acc} read from the trials' result.json."""
    scores = {}
    for trial_dir in Path(exp_dir).glob("trial_*"):
        for line in (trial_dir / "result.json").read_text().splitlines():
            result = json.loads(line)
            scores[result["trial_id"], result["epoch"]] = result["val_acc"]
    return scores


def printed_best(out):
    """(trial_id, epoch) that tune.best printed."""
    trial_id = next(line for line in out.splitlines() if line.startswith("Best trial of")).split()[-1]
    epoch = int(next(line for line in out.splitlines() if " at epoch " in line).split(" at epoch ")[1].split()[0])
    return trial_id, epoch


def checkpoint_line(out):
    return Path(next(line for line in out.splitlines() if "checkpoint " in line).split()[-1])


def test_latest_experiment_best_trial_epoch_and_checkpoint(experiment):
    code, out, err = run_main(best, ["--storage", str(experiment["storage"])])   # no --experiment: the latest
    assert code == 0, err
    scores = val_acc_by_trial_and_epoch(experiment["dir"])
    trial_id, epoch = printed_best(out)
    assert f"Best trial of {experiment['dir']}: " in out
    val_acc = scores[trial_id, epoch]
    assert val_acc == max(scores.values())   # the best score of any trial at any epoch (ties allowed)
    assert f"best_val_acc {val_acc:.4f} at epoch {epoch}" in out
    path = checkpoint_line(out)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["epoch"] == epoch and saved["metrics"]["val_acc"] == pytest.approx(val_acc)
    assert not (experiment["dir"] / "best").exists()   # nothing written without --submit


def test_submit_from_the_best_checkpoint(experiment, tmp_path):
    code, out, err = run_main(best, ["--experiment", str(experiment["dir"]), "--submit", "--no-retrain",
                                     "--out", str(tmp_path)])
    assert code == 0, err
    submission = pd.read_csv(tmp_path / "submission.csv")
    assert list(submission.columns) == ["Id", "Class"]
    assert sorted(submission.Id) == sorted(p.name for p in (experiment["data"] / "Test").iterdir())
    assert (tmp_path / "predictions.png").stat().st_size > 0
    assert not (tmp_path / "history.csv").exists()   # predicted, not trained


def test_retrain_on_train_and_validation(experiment, tmp_path):
    code, out, err = run_main(best, ["--experiment", str(experiment["dir"]), "--submit", "--retrain",
                                     "--train-on-val", "--out", str(tmp_path)])
    assert code == 0, err
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.epoch) == [1, 2]   # the search's full epoch budget
    config = json.loads((tmp_path / "config.json").read_text())
    trial_id, _ = printed_best(out)
    trial_config = json.loads(next(experiment["dir"].glob(f"trial_{trial_id}")).joinpath("params.json").read_text())
    assert config["lr"] == pytest.approx(trial_config["lr"])
    assert len(pd.read_csv(tmp_path / "submission.csv")) == len(list((experiment["data"] / "Test").iterdir()))


def test_mistakes_are_refused(experiment, tmp_path):
    code, _, err = run_main(best, ["--experiment", str(experiment["dir"]), "--train-on-val"])
    assert code == 2 and "--train-on-val needs --retrain" in err
    code, _, err = run_main(best, ["--experiment", str(tmp_path)])
    assert code == 2 and "not an experiment" in err and str(tmp_path) in err
    code, _, err = run_main(best, ["--storage", str(tmp_path)])
    assert code == 2 and "no experiment in" in err
    code, _, err = run_main(best, ["--experiment", "nowhere", "--storage", str(tmp_path)])
    assert code == 2 and "--experiment nowhere: no such folder here" in err and str(tmp_path / "nowhere") in err


# --- tune.best never runs code from an experiment folder; --data; its errors say dogs-best ---

class Payload:
    """Creates `marker` when unpickled: what a planted experiment state would do to a reader that unpickles it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_payloads(exp_dir, marker):
    """Replace Ray's pickled state in a copy of an experiment: experiment_state-*.json (its cloudpickled
    values), tuner.pkl, searcher-state-*.pkl and every trial's params.pkl."""
    payload = pickle.dumps(Payload(marker))
    for state_file in exp_dir.glob("experiment_state-*.json"):
        state = json.loads(state_file.read_text())
        for entry in state["trial_data"]:
            trial = json.loads(entry[0])
            trial["storage"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}
            entry[0] = json.dumps(trial)
        state_file.write_text(json.dumps(state))
    for pickled in [exp_dir / "tuner.pkl", *exp_dir.glob("searcher-state-*.pkl"), *exp_dir.glob("trial_*/params.pkl")]:
        pickled.write_bytes(payload)


def test_best_runs_no_code_planted_in_the_experiment_state(experiment, tmp_path):
    planted = shutil.copytree(experiment["dir"], tmp_path / "runs" / "planted")
    marker = tmp_path / "pwned"
    plant_payloads(planted, marker)
    _, expected, _ = run_main(best, ["--experiment", str(experiment["dir"])])
    code, out, err = run_main(best, ["--experiment", str(planted)])
    assert code == 0, err
    assert printed_best(out) == printed_best(expected)   # the same best trial and epoch, from the files it parses
    code, out, err = run_main(best, ["--storage", str(tmp_path / "runs"), "--submit", "--out", str(tmp_path / "sub")])
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "sub" / "submission.csv")) == len(list((experiment["data"] / "Test").iterdir()))
    assert not marker.exists()


def test_best_data_dir_predicts_for_data_that_moved(experiment, tmp_path):
    # the experiment came from another machine: its trials and checkpoints name a data folder that is not here
    moved = shutil.copytree(experiment["dir"], tmp_path / "moved")
    for path in moved.glob("trial_*/checkpoint_*/checkpoint.pt"):
        state = torch.load(path, weights_only=True)
        state["config"]["data"] = "/data/on/another/machine"
        torch.save(state, path)
    for path in moved.glob("trial_*/params.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "data": "/data/on/another/machine"}))
    code, _, err = run_main(best, ["--experiment", str(moved), "--submit", "--out", str(tmp_path / "a")])
    assert code == 2 and err.startswith("dogs-best: error: ") and "/data/on/another/machine" in err
    assert "--data" in err and "Traceback" not in err
    code, out, err = run_main(best, ["--experiment", str(moved), "--submit", "--out", str(tmp_path / "b"),
                                     "--data", str(experiment["data"])])
    assert code == 0, err
    assert sorted(pd.read_csv(tmp_path / "b" / "submission.csv").Id) == sorted(
        p.name for p in (experiment["data"] / "Test").iterdir())
    code, _, err = run_main(best, ["--experiment", str(moved), "--submit", "--data", str(tmp_path / "nowhere")])
    assert code == 2 and err.startswith("dogs-best: error: --data: ") and "nowhere" in err and "Traceback" not in err


def test_errors_from_shared_helpers_name_dogs_best(experiment, tmp_path):
    code, _, err = run_main(best, ["--storage", str(tmp_path)])   # the latest experiment: a shared helper
    assert code == 2 and err.startswith("dogs-best: error: no experiment in")
    broken = shutil.copytree(experiment["dir"], tmp_path / "broken")
    for path in broken.glob("trial_*/checkpoint_*/checkpoint.pt"):
        path.write_bytes(path.read_bytes()[:100])   # truncated
    code, _, err = run_main(best, ["--experiment", str(broken)])
    assert code == 2 and err.startswith("dogs-best: error: ") and "checkpoint.pt is not a checkpoint" in err
    assert err.count("\n") == 1


def test_submit_with_tta_and_an_ensemble_writes_a_report(experiment, tmp_path):
    code, out, err = run_main(best, ["--experiment", str(experiment["dir"]), "--submit", "--tta", "--ensemble", "2",
                                     "--out", str(tmp_path)])
    assert code == 0, err
    accuracy = pd.read_csv(tmp_path / "report" / "accuracy.csv")
    assert list(accuracy.predictor) == ["single", "single + TTA", "ensemble of 2", "ensemble of 2 + TTA"]
    assert accuracy.val_acc.between(0, 1).all() and (accuracy.images == 24).all()
    assert all(f"{row.val_acc:.4f}  {row.predictor}" in out for row in accuracy.itertuples())   # printed too
    # a note names the better predictor when the submitted one (the last) scores below it
    top = accuracy.predictor[accuracy.val_acc.idxmax()]
    assert ("note" in out) == (accuracy.val_acc.iloc[-1] < accuracy.val_acc.max())
    assert "note" not in out or f"scores below {top} on Validation" in out
    trial_id, epoch = printed_best(out)
    assert accuracy.val_acc[0] == pytest.approx(val_acc_by_trial_and_epoch(experiment["dir"])[trial_id, epoch])
    per_class = pd.read_csv(tmp_path / "report" / "per_class.csv")
    assert list(per_class["class"]) == ["circle", "square", "triangle"] and per_class.images.sum() == 24
    assert per_class.correct.sum() / 24 == pytest.approx(accuracy.val_acc.iloc[-1])   # of the submitted predictor
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 1000
    assert len(pd.read_csv(tmp_path / "submission.csv")) == len(list((experiment["data"] / "Test").iterdir()))
    code, _, err = run_main(best, ["--experiment", str(experiment["dir"]), "--submit", "--ensemble", "3"])
    assert code == 2 and "only 2 trial(s) kept a checkpoint" in err
    code, _, err = run_main(best, ["--experiment", str(experiment["dir"]), "--tta"])
    assert code == 2 and "need --submit" in err


# --- an experiment folder that was damaged, mixed with another, or is still being written ---

def damaged_copy(experiment, tmp_path, name):
    """A copy of the finished experiment, and its trial folders."""
    copy = shutil.copytree(experiment["dir"], tmp_path / name)
    return copy, sorted(copy.glob("trial_*"))


def test_a_damaged_trial_file_leaves_that_trial_out_in_one_warning_and_a_line_being_written_is_not_reported_yet(
        experiment, tmp_path):
    _, expected, _ = run_main(best, ["--experiment", str(experiment["dir"])])
    winner, _ = printed_best(expected)
    # the last line of a result.json without its newline: an epoch still being written (a running search)
    running, trials = damaged_copy(experiment, tmp_path, "running")
    for trial in trials:
        with open(trial / "result.json", "a") as f:
            f.write('{"epoch": 3, "val_acc": 0.9')
    code, out, err = run_main(best, ["--experiment", str(running)])
    assert code == 0 and printed_best(out) == printed_best(expected), err
    # the winner's params.json empty (a write cut by a full disk), not JSON, or another line of its result.json
    # that is not an epoch's JSON, or its checkpoint empty: that trial is left out, named in one warning; the
    # other one is the best (was: the whole experiment refused, "the experiment is damaged")
    for name, file, text in (("empty", "params.json", ""), ("params", "params.json", '{"lr": 0.0'),
                             ("garbage", "result.json", "{oops\n"), ("list", "result.json", "[1, 2]\n"),
                             ("checkpoint", "checkpoint.pt", "")):
        damaged, _ = damaged_copy(experiment, tmp_path, name)
        path = (next((damaged / f"trial_{winner}").glob("checkpoint_*")) if file == "checkpoint.pt"
                else damaged / f"trial_{winner}") / file
        path.write_text(text + (path.read_text() if file == "result.json" else ""))
        code, out, err = run_main(best, ["--experiment", str(damaged), "--submit", "--out", str(tmp_path / name)])
        assert code == 0, err
        assert printed_best(out)[0] != winner and (tmp_path / name / "submission.csv").exists()
        assert err.startswith("Warning: 1 trial(s)") and str(path) in err and err.count("\n") == 1, err


def rewrite_results(trial_dir, change):
    """Apply change(result) to every epoch of a trial's result.json."""
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    for row in rows:
        change(row)
    (trial_dir / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_diverged_trial_never_wins_and_all_diverged_is_one_line(experiment, tmp_path):
    # a trial whose val_acc is Infinity at one epoch (a value that cannot be a score) ranks as if it had not
    # reported that epoch: the other trial wins, as with NaN
    _, expected, _ = run_main(best, ["--experiment", str(experiment["dir"])])
    winner, _ = printed_best(expected)
    inf, trials = damaged_copy(experiment, tmp_path, "inf")
    other = next(t for t in trials if t.name != f"trial_{winner}")
    rewrite_results(other, lambda row: row.update(val_acc=float("inf")) if row["epoch"] == 1 else None)
    code, out, err = run_main(best, ["--experiment", str(inf)])
    assert code == 0 and printed_best(out) == printed_best(expected), err
    # every epoch of every trial NaN: no best trial, nothing predicted
    nan, trials = damaged_copy(experiment, tmp_path, "nan")
    for trial in trials:
        rewrite_results(trial, lambda row: row.update(val_acc=float("nan")))
    code, _, err = run_main(best, ["--experiment", str(nan), "--submit", "--out", str(tmp_path / "out")])
    assert code == 2 and "no trial has reported a finite val_acc: every value is NaN or Infinity" in err
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_that_is_not_its_trials_is_refused(experiment, tmp_path):
    """tune.best ranks trials by result.json and predicts from the checkpoint folder the best epoch names: a
    params.json that disagrees with the checkpoint's config (another run's, another data set's), or checkpoints
    swapped between trials, would predict with another model than the one ranked."""
    swapped, (a, b) = damaged_copy(experiment, tmp_path, "swapped")
    ca, cb = next(a.glob("checkpoint_*")), next(b.glob("checkpoint_*"))
    ca.rename(tmp_path / "tmp"), cb.rename(ca), (tmp_path / "tmp").rename(cb)
    code, _, err = run_main(best, ["--experiment", str(swapped), "--submit", "--out", str(tmp_path / "out")])
    assert code == 2 and "is not the checkpoint of trial" in err and "lr (checkpoint: " in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
    other_data, trials = damaged_copy(experiment, tmp_path, "other_data")
    for path in other_data.glob("trial_*/checkpoint_*/checkpoint.pt"):
        state = torch.load(path, weights_only=True)
        state["config"]["data"] = str(tmp_path)
        torch.save(state, path)
    code, _, err = run_main(best, ["--experiment", str(other_data)])
    assert code == 2 and f"data (checkpoint: '{tmp_path}', params.json: '{experiment['data']}')" in err
    # another epoch's checkpoint in the folder result.json names
    epoch, trials = damaged_copy(experiment, tmp_path, "epoch")
    for path in epoch.glob("trial_*/checkpoint_*/checkpoint.pt"):
        state = torch.load(path, weights_only=True)
        state["epoch"] = 7
        torch.save(state, path)
    code, _, err = run_main(best, ["--experiment", str(epoch)])
    assert code == 2 and "it is of epoch 7" in err and "result.json reports epoch" in err


def test_plots_never_create_or_open_a_database_an_experiment_file_names(experiment, tmp_path):
    """The searcher state names the study's database: a planted URL creates no file and is one line; a study.db
    that is not a database too."""
    planted, _ = damaged_copy(experiment, tmp_path, "planted")
    state_file = next(planted.glob("searcher-state-*.pkl"))
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "in_experiment": False,
                                      "study_url": f"sqlite:///{tmp_path}/made/here.db"}))
    code, _, err = run_main(best, ["--experiment", str(planted), "--plots"])
    assert code == 2 and "the search's Optuna study is missing" in err and err.count("\n") == 1
    assert not (tmp_path / "made").exists()
    broken, _ = damaged_copy(experiment, tmp_path, "broken")
    (broken / "study.db").write_text("not a database")
    code, _, err = run_main(best, ["--experiment", str(broken), "--plots"])
    assert code == 2 and "cannot read the Optuna study" in err and err.count("\n") == 1
    state_file = next(broken.glob("searcher-state-*.pkl"))
    state_file.write_text("{}")
    code, _, err = run_main(best, ["--experiment", str(broken), "--plots"])
    assert code == 2 and "is not a searcher state of dogs-search" in err and err.count("\n") == 1


def test_best_writes_nothing_through_a_link_planted_in_the_experiment(experiment, tmp_path):
    linked, _ = damaged_copy(experiment, tmp_path, "linked")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("best", "plots"):
        shutil.rmtree(linked / name, ignore_errors=True)
        (linked / name).symlink_to(elsewhere)
    for flag in ("--submit", "--plots"):
        code, _, err = run_main(best, ["--experiment", str(linked), flag])
        assert code == 2 and "is a link (to " in err and err.count("\n") == 1, err
    assert list(elsewhere.iterdir()) == []


def test_sigterm_during_retrain_exits_143_with_the_command_that_continues_it(experiment, tmp_path, monkeypatch):
    """SIGTERM (Slurm, Kubernetes, kill) stops --retrain as Ctrl-C does: one line with the dogs.train command that
    continues it, exit 143; that command finishes the retrain's epochs."""
    import os
    import shlex
    import signal

    from dogs import engine, train

    real, calls = engine.evaluate, []

    def sigterm_at_the_first_epoch(*args):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(engine, "evaluate", sigterm_at_the_first_epoch)
    out_dir = tmp_path / "retrain"
    code, out, err = run_main(best, ["--experiment", str(experiment["dir"]), "--retrain", "--out", str(out_dir)])
    assert code == 143, out[-3000:] + err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "retrain interrupted; continue it with: " in lines[0], err
    command = shlex.split(lines[0].split("continue it with: ")[1])
    assert command[:3] == ["python", "-m", "dogs.train"] and "--resume" in command
    monkeypatch.undo()
    train.main(command[3:])   # the printed command, as typed
    assert list(pd.read_csv(out_dir / "history.csv").epoch) == [1, 2]


# --- --predict and --export from the experiment's best trials (tests/test_predict_photos.py, test_export.py: more) ---

def test_predict_with_an_ensemble_and_tta_equals_their_submission_and_lands_in_best(experiment, tmp_path):
    from dogs import data

    exp_dir = tmp_path / "b"
    shutil.copytree(experiment["dir"], exp_dir)   # the default --out is the experiment's best/
    code, out, err = run_main(best, ["--experiment", str(exp_dir), "--predict", str(experiment["data"] / "Test"),
                                     "--ensemble", "2", "--tta", "--top-k", "2"])
    assert code == 0, err
    rows = pd.read_csv(exp_dir / "best" / "predictions.csv")
    code, _, err = run_main(best, ["--experiment", str(exp_dir), "--submit", "--ensemble", "2", "--tta",
                                   "--out", str(tmp_path / "s")])
    assert code == 0, err
    submission = pd.read_csv(tmp_path / "s" / "submission.csv")
    names = [f.name for f in data.test_files(experiment["data"])]
    assert [p.rsplit("/", 1)[-1] for p in rows.file] == sorted(names) and rows.error.isna().all()
    by_name = dict(zip(rows.file.map(lambda p: p.rsplit("/", 1)[-1]), rows.class_index))
    assert [by_name[n] for n in submission.Id] == list(submission.Class)
    assert "Best trial of" in out and "  + trial" in out and "ensemble of 2" in out


def test_export_from_the_best_trial_names_the_search_in_its_card(experiment, tmp_path):
    code, out, err = run_main(best, ["--experiment", str(experiment["dir"]), "--export", str(tmp_path / "model")])
    assert code == 0, err
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    trial_id = next(line for line in out.splitlines() if line.startswith("Best trial of")).split(": ")[1].split()[0]
    assert card["source"]["experiment"] == str(experiment["dir"]) and card["source"]["trial"] == trial_id
    assert card["source"]["metric"] == "val_acc" and card["source"]["mode"] == "max"
    scores = val_acc_by_trial_and_epoch(experiment["dir"])
    assert card["source"]["metrics"]["val_acc"] == pytest.approx(scores[trial_id, card["source"]["epoch"]])
    assert max(v for (t, _), v in scores.items() if t == trial_id) == pytest.approx(card["source"]["metrics"]["val_acc"])
    assert (f"trial {trial_id} of experiment `{experiment['dir']}`, the best by val_acc (max): "
            f"{card['source']['metrics']['val_acc']} at its best epoch, {card['source']['epoch']}."
            in (tmp_path / "model" / "MODEL_CARD.md").read_text())


def test_resume_with_a_trial_whose_params_json_is_empty_leaves_that_trial_out_in_one_warning(experiment, tmp_path):
    # a full disk cut Ray's write of one params.json: --resume refused the whole experiment (#17)
    storage = tmp_path / "runs"
    damaged = shutil.copytree(experiment["dir"], storage / "b")
    emptied = sorted(damaged.glob("trial_*"))[0] / "params.json"
    emptied.write_text("")
    code, out, err = run_main(search, ["--resume", "--storage", str(storage), "--name", "b"])
    assert code == 0, out[-3000:] + err[-3000:]
    assert f"{emptied} is empty" in err and err.count("trial(s) cannot be read") == 1, err[-3000:]
    table = pd.read_csv(damaged / "trials.csv", dtype={"trial_id": str})
    assert sorted(table.status) == ["DAMAGED", "TERMINATED"]


def test_best_config_yaml_runs_in_dogs_train_as_is(experiment, tmp_path):
    """best/config.yaml is the best trial's whole config for its full budget: dogs.train --config trains it."""
    import yaml

    from dogs import train

    code, out, err = run_main(best, ["--experiment", str(experiment["dir"]), "--out", str(tmp_path / "best")])
    assert code == 0, err
    path = tmp_path / "best" / "config.yaml"
    assert f"config file  {path}  (python -m dogs.train --config {path})" in out
    saved = torch.load(checkpoint_line(out), map_location="cpu", weights_only=True)
    config = yaml.safe_load(path.read_text())
    assert config == {**saved["config"], "epochs": 2, "metric": "val_acc", "mode": "max"}
    code, out, err = run_main(train, ["--config", str(path), "--out", str(tmp_path / "again")])
    assert code is None, out[-2000:] + err[-2000:]   # main returns nothing on success
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == config


@given(top=st.sampled_from([None, 1, 3]), seeds=st.sampled_from([None, 1, 2, 4]),
       ensemble=st.sampled_from([None, 1, 2, 3]), best_seed=st.booleans(), train_on_val=st.booleans(),
       budget=st.sampled_from([None, "none", "90s"]))
def test_the_hand_over_of_top_is_its_seeds_averaged_unless_best_seed(top, seeds, ensemble, best_seed, train_on_val,
                                                                       budget):
    """--retrain --top: every combination of the hand-over flags is refused in one line or resolves to the members
    it says: all N seeds averaged by default, the best seed alone with --best-seed (or --train-on-val, which trains
    once more), K with --ensemble K (K <= N); --retrain without --top trains one config: no ensemble."""
    argv = ["--retrain", "--submit"] + (["--top", str(top)] if top else []) + (["--seeds", str(seeds)] if seeds else [])
    argv += (["--ensemble", str(ensemble)] if ensemble else []) + (["--best-seed"] if best_seed else [])
    argv += (["--train-on-val"] if train_on_val else []) + (["--time-budget", budget] if budget else [])
    args = best.get_args_parser().parse_args(argv)
    try:
        best.check_flags(args)
    except ExperimentError as err:
        assert "\n" not in str(err)
        reevaluating = bool(top or seeds)
        n = (seeds or 3) if reevaluating else None
        assert ((best_seed and (not reevaluating or ensemble or train_on_val))
                or (budget == "90s" and (not reevaluating or train_on_val))
                or (reevaluating and (ensemble or 0) > n) or ((ensemble or 1) > 1 and train_on_val)
                or (not reevaluating and (ensemble or 1) > 1)), (argv, err)   # --retrain alone trains one
        return
    if top is None and seeds is None:   # --retrain alone: one config trained again, no ensemble
        assert args.ensemble == 1 and not best_seed and args.time_budget is None
        return
    n = seeds or 3
    expected = ensemble or (1 if best_seed or train_on_val else n)
    assert args.ensemble == expected and 1 <= args.ensemble <= n
    assert args.time_budget == (None if budget in (None, "none") else budget)
