"""tune.best: the best trial of an experiment, predictions from its checkpoint or from a retrained config."""
import json
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

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
    # the experiment came from another machine: its checkpoints name a data folder that is not here
    moved = shutil.copytree(experiment["dir"], tmp_path / "moved")
    for path in moved.glob("trial_*/checkpoint_*/checkpoint.pt"):
        state = torch.load(path, weights_only=True)
        state["config"]["data"] = "/data/on/another/machine"
        torch.save(state, path)
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
