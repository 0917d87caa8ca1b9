"""The search end to end on tiny data: ASHA stops trials, Optuna sees them PRUNED, every trial is in
trials.csv and TensorBoard, tune.best submits; an interrupted search resumes without rerunning anything."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from tune import best, search
from tune.searcher import AshaAwareOptunaSearch
from conftest import run_main

EPOCHS = 3
SPACE = """
search:
  samples: {samples}
  epochs: 3
  grace_period: {grace_period}
  reduction_factor: 2
  seed: {seed}
  max_concurrent: {max_concurrent}
params:
  model: cnn
  image_size: 16
  batch_size: 16
  lr: {{loguniform: [1e-6, 3e-2]}}     # wide: some trials learn nothing, so ASHA has something to stop
  head_width: {{choice: [0, 32]}}
"""


def write_space(folder, samples, seed=0, max_concurrent="null", grace_period=1):
    path = Path(folder) / "space.yaml"
    path.write_text(SPACE.format(samples=samples, seed=seed, max_concurrent=max_concurrent, grace_period=grace_period))
    return path


def study_of(exp_dir):
    """{trial_id: optuna FrozenTrial} from the searcher state saved in the experiment."""
    searcher = AshaAwareOptunaSearch(None, "val_acc", "max", None, EPOCHS)
    searcher.restore_from_dir(str(exp_dir))
    trials = searcher._ot_study.trials
    return {trial_id: trials[ot_trial.number] for trial_id, ot_trial in searcher._ot_trials.items()}


def iterations(trial_dir):
    """training_iteration of every line of a trial's result.json."""
    lines = (Path(trial_dir) / "result.json").read_text().splitlines()
    return [json.loads(line)["training_iteration"] for line in lines if line.strip()]


@pytest.fixture(scope="module")
def experiment(tiny_imagefolder, tmp_path_factory):
    """One search of 6 trials x 3 epochs, shared by the tests below."""
    folder = tmp_path_factory.mktemp("search")
    argv = ["--space", str(write_space(folder, samples=6)), "--data", str(tiny_imagefolder),
            "--storage", str(folder / "runs"), "--name", "e2e"]
    code, out, err = run_main(search, argv)
    assert code == 0, out[-3000:] + err[-3000:]
    exp_dir = folder / "runs" / "e2e"
    return {"dir": exp_dir, "out": out, "table": pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str}), "data": tiny_imagefolder}


def test_every_trial_is_in_trials_csv(experiment):
    table = experiment["table"]
    assert len(table) == 6 and table.trial_id.is_unique
    assert set(table.status) == {"TERMINATED"}
    assert table.lr.between(1e-6, 3e-2).all() and set(table.head_width) <= {0, 32}
    for row in table.itertuples():
        assert iterations(row.path) == list(range(1, row.epochs + 1))


def test_asha_stopped_some_trials_and_optuna_sees_them_pruned(experiment):
    table = experiment["table"]
    stopped = table[table.stopped_early]
    assert 1 <= len(stopped) < len(table), table[["trial_id", "epochs", "val_acc"]]
    assert (stopped.epochs < EPOCHS).all() and (table[~table.stopped_early].epochs == EPOCHS).all()
    study = study_of(experiment["dir"])
    assert set(study) == set(table.trial_id)
    for row in table.itertuples():
        ot_trial = study[row.trial_id]
        if row.stopped_early:
            # told PRUNED, with its score for every epoch it ran as intermediate values
            assert ot_trial.state.name == "PRUNED"
            assert sorted(ot_trial.intermediate_values) == list(range(1, row.epochs + 1))
            assert ot_trial.intermediate_values[row.epochs] == pytest.approx(row.best_val_acc)
        else:
            # TPE is told the trial's best epoch (best_<metric>): what the winner is chosen by
            assert ot_trial.state.name == "COMPLETE"
            assert ot_trial.value == pytest.approx(row.best_val_acc)


def test_summary_reports_counts_overhead_and_where(experiment):
    out = experiment["out"]
    table = experiment["table"]
    n_stopped = int(table.stopped_early.sum())
    assert f"6 run: {6 - n_stopped} complete, {n_stopped} stopped early by ASHA, 0 errored" in out
    assert "driver overhead" in out and "best config" in out
    assert str(experiment["dir"] / "trials.csv") in out


def test_tensorboard_has_every_trial_with_curves_and_hparams(experiment):
    table = experiment["table"]
    for row in table.itertuples():
        events = EventAccumulator(row.path)
        events.Reload()
        scalars = events.Tags()["scalars"]
        assert {"val_acc", "best_val_acc", "train_loss"} <= set(scalars)
        assert not any(tag.startswith("ray/tune") for tag in scalars)   # Ray's own writer is off
        val_acc = events.Scalars("val_acc")
        assert [e.step for e in val_acc] == list(range(1, row.epochs + 1))
        assert val_acc[-1].value == pytest.approx(row.val_acc, abs=1e-6)
        content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
        start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
        assert start.hparams["lr"].number_value == pytest.approx(row.lr)
        assert start.hparams["head_width"].number_value == row.head_width
        assert hparams_metadata.SESSION_END_INFO_TAG in content


def test_best_prints_and_submits(experiment, tmp_path):
    code, out, err = run_main(best, ["--experiment", str(experiment["dir"]), "--submit", "--out", str(tmp_path)])
    assert code == 0, err
    table = experiment["table"]
    tops = table[table.best_val_acc == table.best_val_acc.max()]   # ties: any of them is the best
    assert any(t in out for t in tops.trial_id) and f"{tops.best_val_acc.iloc[0]:.4f}" in out
    submission = pd.read_csv(tmp_path / "submission.csv")
    test_files = sorted(p.name for p in (experiment["data"] / "Test").iterdir())
    assert list(submission.columns) == ["Id", "Class"]
    assert sorted(submission.Id) == test_files
    assert set(submission.Class) <= {0, 1, 2}   # class indices (sorted class folder names)
    assert (tmp_path / "predictions.png").stat().st_size > 0


def test_resume_after_ctrl_c_reruns_nothing(tiny_imagefolder, tmp_path):
    samples = 5
    # one trial at a time, no early stopping: a trial has finished exactly when it reached epoch 3
    space = write_space(tmp_path, samples=samples, seed=1, max_concurrent=1, grace_period=EPOCHS)
    storage, name = tmp_path / "runs", "resume"
    exp_dir = storage / name
    # 64 px: epochs long enough that Ctrl-C lands while the second trial runs (cached trials start at once)
    cmd = [sys.executable, "-m", "tune.search", "--space", str(space), "--data", str(tiny_imagefolder),
           "--storage", str(storage), "--name", name, "--set", "image_size=64"]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_AUTH_MODE": "disabled"})

    # interrupt (Ctrl-C) once one trial has finished and the next one has reported an epoch
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        runs = [iterations(p) for p in exp_dir.glob("trial_*") if (p / "result.json").exists()]
        if any(its[-1:] == [EPOCHS] for its in runs) and any(1 <= len(its) < EPOCHS for its in runs):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-3000:]
    before = {p.name: (p / "result.json").read_text() for p in exp_dir.glob("trial_*")
              if (p / "result.json").exists() and (p / "result.json").read_text().strip()}
    finished = {n for n, text in before.items() if json.loads(text.splitlines()[-1])["training_iteration"] == EPOCHS}
    assert 1 <= len(finished) < samples, before.keys()

    # resume: finished trials untouched, interrupted ones continue from their checkpoint, none twice
    code, out, err = run_main(search, ["--resume", "--storage", str(storage), "--name", name])
    assert code == 0, out[-3000:] + err[-3000:]
    table = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    assert len(table) == samples and set(table.status) == {"TERMINATED"}
    for trial_name, text in before.items():
        after = (exp_dir / trial_name / "result.json").read_text()
        if trial_name in finished:
            assert after == text, f"{trial_name} ran again"
        else:
            assert after.startswith(text), f"{trial_name} restarted instead of continuing"
    for row in table.itertuples():
        # every epoch ran; at most the one epoch in flight at Ctrl-C ran twice (Ray's saved state can lag
        # the last result by that epoch; with the per-epoch seed its second run is the same computation)
        its = iterations(row.path)
        assert sorted(set(its)) == list(range(1, row.epochs + 1)), row.trial_id
        assert len(its) - len(set(its)) <= (0 if row.trial_id in {n[len("trial_"):] for n in finished} else 1)
    assert len(study_of(exp_dir)) == samples   # the searcher's state came back: no trial suggested twice


def test_gpu_request_on_a_gpu_less_machine_fails_fast(tiny_imagefolder, tmp_path):
    import ray
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    start = time.time()
    code, out, err = run_main(search, ["--space", str(write_space(tmp_path, samples=2)), "--data",
                                       str(tiny_imagefolder), "--storage", str(tmp_path), "--gpus-per-trial", "1"])
    assert code == 2
    assert "--gpus-per-trial 1 asks for a GPU" in err and "PENDING forever" in err and "GPU=0" in err
    assert time.time() - start < 30 and not ray.is_initialized()


def test_bad_space_or_data_fails_before_ray(tiny_imagefolder, tmp_path):
    import ray

    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {lr: {loguniform: [0, 1]}}\n")
    code, _, err = run_main(search, ["--space", str(bad), "--data", str(tiny_imagefolder), "--storage", str(tmp_path)])
    assert code == 2 and str(bad) in err and "params.lr.loguniform" in err
    code, _, err = run_main(search, ["--space", "cnn_scratch", "--data", str(tmp_path / "nowhere")])
    assert code == 2 and "--data" in err and "nowhere" in err
    assert not ray.is_initialized()


def swapped_validation(root):
    """Validation's class folders rotated: the better a model learns Train, the worse its val_loss gets, so
    val_loss is lowest at an early epoch and the last epoch is not the best."""
    for a, b in (("circle", "tmp"), ("square", "circle"), ("triangle", "square"), ("tmp", "triangle")):
        (root / "Validation" / a).rename(root / "Validation" / b)
    return root


def test_one_best_val_loss_min_summary_best_kept_checkpoint_train_and_retrain_agree(tmp_path):
    from conftest import make_imagefolder
    import torch
    from dogs import checkpoint, train

    data = swapped_validation(make_imagefolder(tmp_path / "data", n_train=16, n_val=6, awkward=False))
    space = tmp_path / "space.yaml"
    space.write_text("""
search: {samples: 2, epochs: 3, grace_period: 3, seed: 0, metric: val_loss, mode: min}
params: {model: cnn, image_size: 16, batch_size: 16, head_width: 32, lr: {loguniform: [3e-3, 1e-2]}}
""")
    code, out, err = run_main(search, ["--space", str(space), "--data", str(data), "--storage", str(tmp_path / "runs"),
                                       "--name", "loss"])
    assert code == 0, out[-3000:] + err[-3000:]
    exp_dir = tmp_path / "runs" / "loss"
    table = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    results = {row.trial_id: [json.loads(line) for line in Path(row.path, "result.json").read_text().splitlines()]
               for row in table.itertuples()}
    best_epochs = {t: min(reversed(rs), key=lambda r: r["val_loss"])["epoch"] for t, rs in results.items()}
    best_losses = {t: min(r["val_loss"] for r in rs) for t, rs in results.items()}
    winner = min(best_losses, key=best_losses.get)
    assert best_epochs[winner] != 3   # the case: the last epoch is not the best one

    # 1. every trial keeps its best epoch's checkpoint, and trials.csv reports best_val_loss at that epoch
    for row in table.itertuples():
        assert checkpoint.read(row.checkpoint)["epoch"] == best_epochs[row.trial_id] == row.best_epoch
        assert row.best_val_loss == pytest.approx(best_losses[row.trial_id])
    # 2. the summary's best trial is the one with the lowest val_loss at any epoch
    assert f"best trial   {winner}: best_val_loss={best_losses[winner]:.4f} at epoch {best_epochs[winner]}" in out
    # 3. TPE was told each trial's best_val_loss
    study = AshaAwareOptunaSearch(None, "best_val_loss", "min", None, 3)
    study.restore_from_dir(str(exp_dir))
    for trial_id, ot_trial in study._ot_trials.items():
        assert study._ot_study.trials[ot_trial.number].value == pytest.approx(best_losses[trial_id])
    # 4. tune.best picks the same trial and epoch, and predicts from that checkpoint
    code, out, err = run_main(best, ["--experiment", str(exp_dir)])
    assert code == 0, err
    assert f"Best trial of {exp_dir}: {winner}" in out
    assert f"best_val_loss {best_losses[winner]:.4f} at epoch {best_epochs[winner]}" in out
    # 5. tune.best --retrain's best.pt (dogs.train.run) is the best epoch by the same metric and mode
    code, out, err = run_main(best, ["--experiment", str(exp_dir), "--submit", "--retrain", "--out",
                                     str(tmp_path / "retrain")])
    assert code == 0, err
    history = pd.read_csv(tmp_path / "retrain" / "history.csv")
    best_row = history.iloc[::-1].val_loss.idxmin()   # the later of equal epochs
    assert checkpoint.read(tmp_path / "retrain" / "best.pt")["epoch"] == history.epoch[best_row] != 3
    # and dogs.train by itself, with the same metric and mode
    config = {**checkpoint.read(tmp_path / "retrain" / "best.pt")["config"], "epochs": 3}
    result = train.run(config, tmp_path / "train", log=lambda m: None, device=torch.device("cpu"))
    assert result["best_epoch"] == min(reversed(result["history"]), key=lambda m: m["val_loss"])["epoch"] != 3
    assert checkpoint.read(tmp_path / "train" / "best.pt")["epoch"] == result["best_epoch"]
