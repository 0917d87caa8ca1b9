"""The epoch loop end to end: it learns, keeps the best weights, checkpoints round-trip, runs resume."""
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dogs import checkpoint, data, engine, submission, train
from dogs.errors import CheckpointError
from conftest import run_main


def quiet(message):
    pass


@pytest.fixture(scope="module")
def trained(tiny_imagefolder, tmp_path_factory):
    """The CNN trained 6 epochs on the tiny folder with dogs.train.run (the standalone path)."""
    out = tmp_path_factory.mktemp("run")
    config = {"data": str(tiny_imagefolder), "model": "cnn", "image_size": 16, "batch_size": 16, "epochs": 6,
              "lr": 3e-3, "seed": 0}
    return train.run(config, out, log=quiet, device=torch.device("cpu")), out


def test_the_cnn_learns_an_easy_task(trained):
    result, _ = trained
    assert result["best_val_acc"] >= 0.8  # chance is 1/3
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]


def test_submission_has_a_valid_row_per_test_file_in_numeric_order(trained, tiny_imagefolder):
    result, _ = trained
    sub = pd.read_csv(result["submission"])
    assert list(sub.columns) == ["Id", "Class"]
    assert list(sub["Id"]) == [p.name for p in data.test_files(tiny_imagefolder)]
    assert [int(i.split(".")[0]) for i in sub["Id"]] == list(range(12))
    assert sub["Class"].between(0, 2).all()
    truth = np.arange(12) % 3  # conftest draws Test/i as class i % 3
    assert (sub["Class"].to_numpy() == truth).mean() >= 0.7
    assert result["grid"].stat().st_size > 1000


def test_checkpoint_alone_gives_identical_predictions(trained, tiny_imagefolder, tmp_path):
    result, out = trained
    model, ckpt = checkpoint.load(out / "best.pt")
    assert set(ckpt) >= {"model", "optimizer", "config", "classes", "epoch", "metrics"}
    assert ckpt["classes"] == ["circle", "square", "triangle"]
    again = submission.submit(model, ckpt, tmp_path, device=torch.device("cpu"))
    assert pd.read_csv(again["submission"]).equals(pd.read_csv(result["submission"]))


def test_checkpoints_hold_no_pickled_objects(trained):
    _, out = trained
    torch.load(out / "best.pt", weights_only=True)  # raises on any pickled class
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.read(out / "missing")


def test_best_weights_are_restored_when_a_later_epoch_is_worse(tiny_config, tmp_path, monkeypatch):
    scores = iter([0.5, 0.9, 0.3, 0.4])
    real_evaluate = engine.evaluate

    def scripted_evaluate(*args):
        return {**real_evaluate(*args), "acc": next(scores)}

    monkeypatch.setattr(engine, "evaluate", scripted_evaluate)
    result = train.run({**tiny_config, "epochs": 4}, tmp_path, log=quiet, device=torch.device("cpu"))
    best, last = checkpoint.read(tmp_path / "best.pt"), checkpoint.read(tmp_path / "last.pt")
    assert best["epoch"] == 2 and last["epoch"] == 4
    assert not all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    # the submission was written by the restored model: it matches best.pt, not last.pt
    model, ckpt = checkpoint.load(tmp_path / "best.pt")
    redo = submission.submit(model, ckpt, tmp_path / "redo", device=torch.device("cpu"))
    assert pd.read_csv(redo["submission"]).equals(pd.read_csv(result["submission"]))
    assert result["best_val_acc"] == 0.9


def test_resume_continues_at_the_next_epoch_with_the_same_result(tiny_config, tmp_path):
    device = torch.device("cpu")
    straight = train.run({**tiny_config, "epochs": 4}, tmp_path / "straight", log=quiet, device=device)
    train.run({**tiny_config, "epochs": 2}, tmp_path / "split", log=quiet, device=device)
    resumed = train.run({**tiny_config, "epochs": 4}, tmp_path / "split", resume=True, log=quiet, device=device)
    assert [m["epoch"] for m in resumed["history"]] == [1, 2, 3, 4]
    best_epoch = max(reversed(straight["history"]), key=lambda m: m["val_acc"])["epoch"]  # the last of equals
    assert checkpoint.read(tmp_path / "split" / "best.pt")["epoch"] == best_epoch
    assert pd.read_csv(resumed["submission"]).equals(pd.read_csv(straight["submission"]))
    for a, b in zip(straight["history"][2:], resumed["history"][2:]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_resume_keeps_a_best_epoch_from_before_the_interruption(tiny_config, tmp_path, monkeypatch):
    scores = iter([0.5, 0.9, 0.3, 0.4])  # the best epoch (2) comes before the resume at epoch 3
    real_evaluate = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *args: {**real_evaluate(*args), "acc": next(scores)})
    device = torch.device("cpu")
    train.run({**tiny_config, "epochs": 2}, tmp_path, log=quiet, device=device)
    resumed = train.run({**tiny_config, "epochs": 4}, tmp_path, resume=True, log=quiet, device=device)
    assert checkpoint.read(tmp_path / "best.pt")["epoch"] == 2 and resumed["best_val_acc"] == 0.9
    model, ckpt = checkpoint.load(tmp_path / "best.pt")
    redo = submission.submit(model, ckpt, tmp_path / "redo", device=device)
    assert pd.read_csv(redo["submission"]).equals(pd.read_csv(resumed["submission"]))


def test_train_on_val_trains_on_both_splits(tiny_config, tmp_path):
    run = engine.Run({**tiny_config, "epochs": 1}, device=torch.device("cpu"), train_on_val=True, log_fn=quiet)
    train_only = engine.Run({**tiny_config, "epochs": 1}, device=torch.device("cpu"), log_fn=quiet)
    assert len(run.train_batches.index) == len(train_only.train_batches.index) + len(train_only.val_batches.index)


def test_train_on_val_reports_the_epoch_best_pt_holds_the_last(tiny_config, tmp_path, monkeypatch):
    scores = iter([0.9, 0.4])   # Validation is trained on: its best epoch (1) is not the one kept (the last)
    real_evaluate = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *args: {**real_evaluate(*args), "acc": next(scores)})
    lines = []
    result = train.run({**tiny_config, "epochs": 2}, tmp_path, train_on_val=True, log=lines.append,
                       device=torch.device("cpu"))
    assert checkpoint.read(tmp_path / "best.pt")["epoch"] == 2
    # was: "best val_acc 0.9000 at epoch 1" and best_epoch 1, an epoch whose weights are nowhere
    assert result["best_epoch"] == 2 and result["best_val_acc"] == 0.4
    assert "kept the last epoch 2: val_acc 0.4000 (trained on Validation: not held out)" in lines


def test_command_line(tiny_imagefolder, tmp_path, capsys):
    import re

    from conftest import run_main

    config = tmp_path / "cnn.yaml"
    config.write_text("model: cnn\nimage_size: 16\nbatch_size: 16\n")
    train.main(["--data", str(tiny_imagefolder), "--config", str(config), "--set", "epochs=2", "lr=3e-3",
                "--out", str(tmp_path / "out"), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "epoch | train loss | train acc | valid loss | valid acc" in printed
    assert (tmp_path / "out" / "submission.csv").exists() and (tmp_path / "out" / "predictions.png").exists()
    code, _, err = run_main(train, ["--data", str(tiny_imagefolder), "--set", "learning_rate=1"])
    assert code == 2 and re.match(r"dogs-train: error: unknown config key.*'learning_rate'", err), err
    code, _, err = run_main(train, ["--data", str(tmp_path), "--set", "model=cnn", "--out", str(tmp_path / "refused")])
    assert code == 2 and "has no Train/ folder" in err, err
    assert not (tmp_path / "refused").exists()   # a run that cannot start leaves no folder behind


def test_trainable_reports_every_epoch_and_resumes_from_its_checkpoint(tiny_config, tmp_path, monkeypatch):
    """dogs.trainable against Ray Tune's session API, in-process (the search tests run it inside Ray)."""
    import shutil
    import ray
    from ray import tune
    import dogs

    reports, saved = [], {}

    def report(metrics, checkpoint=None):
        with checkpoint.as_directory() as folder:  # keep a copy: Tune persists it, the temp dir goes away
            saved["dir"] = shutil.copytree(folder, tmp_path / f"ckpt{metrics['epoch']}")
        reports.append(metrics)

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Ctx", (), {"get_node_id": lambda self: "n1"})())
    dogs.trainable({**tiny_config, "epochs": 2})
    assert [m["epoch"] for m in reports] == [1, 2]
    assert set(reports[0]) >= {"val_acc", "val_loss", "train_loss", "train_acc", "epoch", "node_id"}
    # restarted with its last checkpoint (node lost, search resumed): it continues at epoch 3
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(saved["dir"]))
    dogs.trainable({**tiny_config, "epochs": 4})
    assert [m["epoch"] for m in reports] == [1, 2, 3, 4]
    assert checkpoint.read(saved["dir"])["epoch"] == 4


# --- best by the config's metric and mode; resume that cannot mix runs; unusable checkpoints are one line ---

def test_best_pt_is_chosen_by_metric_and_mode_not_val_acc(tiny_config, tmp_path, monkeypatch):
    losses = iter([0.9, 0.2, 0.5, 0.7])   # val_loss is lowest at epoch 2; val_acc (real) is best elsewhere
    real_evaluate = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *args: {**real_evaluate(*args), "loss": next(losses)})
    config = {**tiny_config, "epochs": 4, "metric": "val_loss", "mode": "min"}
    result = train.run(config, tmp_path, log=quiet, device=torch.device("cpu"))
    assert checkpoint.read(tmp_path / "best.pt")["epoch"] == 2
    assert result["best_val_loss"] == 0.2 and result["best_epoch"] == 2
    assert [m["best_val_loss"] for m in result["history"]] == [0.9, 0.2, 0.2, 0.2]   # reported every epoch
    assert "best_val_acc" not in result["history"][-1]


def swapped_classes_copy(root, tmp_path):
    """An ImageFolder with other class names but the same count (3) at another path."""
    import shutil
    other = tmp_path / "other-data"
    shutil.copytree(root, other)
    for split in ("Train", "Validation"):
        for old, new in (("circle", "ant"), ("square", "bee"), ("triangle", "cat")):
            (other / split / old).rename(other / split / new)
    return other


def test_resume_on_another_data_set_with_the_same_number_of_classes_is_refused(tiny_config, tmp_path):

    train.run({**tiny_config, "epochs": 1}, tmp_path / "out", log=quiet, device=torch.device("cpu"))
    other = swapped_classes_copy(tiny_config["data"], tmp_path)
    argv = ["--data", str(other), "--set", "model=cnn", "image_size=16", "batch_size=16", "epochs=2",
            "--out", str(tmp_path / "out"), "--resume", "--device", "cpu"]
    code, _, message = run_main(train, argv)
    assert code == 2 and message.startswith("dogs-train: error: --resume") and message.count("\n") == 1
    assert "classes" in message and "ant" in message and "circle" in message and "data folder" in message
    assert checkpoint.read(tmp_path / "out" / "last.pt")["epoch"] == 1   # nothing was overwritten


def test_resume_with_another_data_root_or_model_config_is_refused(tiny_config, tmp_path):
    import shutil
    train.run({**tiny_config, "epochs": 1}, tmp_path / "out", log=quiet, device=torch.device("cpu"))
    same_classes = shutil.copytree(tiny_config["data"], tmp_path / "moved")
    with pytest.raises(CheckpointError, match="data folder") as err:
        train.run({**tiny_config, "data": str(same_classes), "epochs": 2}, tmp_path / "out", resume=True, log=quiet)
    assert "classes" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"head_width \(checkpoint: 512, now: 32\)"):
        train.run({**tiny_config, "head_width": 32, "epochs": 2}, tmp_path / "out", resume=True, log=quiet)
    # what may change on resume: the epoch budget (schedule constant), where the cache is, how the arithmetic runs
    resumed = train.run({**tiny_config, "epochs": 2, "cache_dir": str(tmp_path / "cache"), "channels_last": False},
                        tmp_path / "out", resume=True, log=quiet, device=torch.device("cpu"))
    assert [m["epoch"] for m in resumed["history"]] == [1, 2]


class Interrupt:
    """engine.evaluate that raises KeyboardInterrupt (Ctrl-C) at the given call, or sends this process a real
    signal (`sig`: SIGTERM as `kill` sends it)."""

    def __init__(self, at, sig=None):
        self.at, self.calls, self.real, self.sig = at, 0, engine.evaluate, sig

    def __call__(self, *args):
        self.calls += 1
        if self.calls == self.at:
            if self.sig is None:
                raise KeyboardInterrupt
            os.kill(os.getpid(), self.sig)
        return self.real(*args)


def test_history_csv_keeps_the_epochs_before_a_ctrl_c(tiny_config, tmp_path, monkeypatch):
    device = torch.device("cpu")
    monkeypatch.setattr(engine, "evaluate", Interrupt(at=3))
    with pytest.raises(KeyboardInterrupt):
        train.run({**tiny_config, "epochs": 4}, tmp_path, log=quiet, device=device)
    assert list(pd.read_csv(tmp_path / "history.csv").epoch) == [1, 2]
    monkeypatch.undo()
    train.run({**tiny_config, "epochs": 4}, tmp_path, resume=True, log=quiet, device=device)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.epoch) == [1, 2, 3, 4] and history.val_acc.notna().all()


@pytest.mark.parametrize("sig, status", [(None, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_dogs_train_exits_with_the_command_that_resumes(tiny_imagefolder, tmp_path,
                                                                                 monkeypatch, capsys, sig, status):
    import shlex
    monkeypatch.setattr(engine, "evaluate", Interrupt(at=2, sig=sig))
    monkeypatch.chdir(tmp_path)   # no --out: the default runs/train-<time> lands here
    argv = ["--data", str(tiny_imagefolder), "--set", "model=cnn", "image_size=16", "batch_size=16", "epochs=3",
            "--device", "cpu"]
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    assert stop.value.code == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    command = shlex.split(err[0].split("continue with: ")[1])
    assert command[:3] == ["python", "-m", "dogs.train"] and "--resume" in command and "--out" in command
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    train.main(command[3:])   # the printed command, as typed
    out = Path(command[command.index("--out") + 1])
    assert list(pd.read_csv(out / "history.csv").epoch) == [1, 2, 3]


def bad_checkpoints(good, folder, marker):
    """{case: path} of every kind of unusable checkpoint."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))   # creates the marker file when unpickled

    data = good.read_bytes()
    state = torch.load(good, weights_only=True)
    other_classes = {**state, "classes": state["classes"] + ["extra"]}
    other_model = {**state, "config": {**state["config"], "head_width": 7}}
    cases = {"truncated": data[: len(data) // 2], "text": b"101 not a checkpoint\n"}
    paths = {}
    for name, content in cases.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(content)
    for name, obj in (("pickled_code", {"model": Payload()}), ("other_class_count", other_classes),
                      ("other_model", other_model), ("not_ours", {"weights": torch.zeros(2)})):
        paths[name] = folder / f"{name}.pt"
        torch.save(obj, paths[name], pickle_module=pickle)
    return paths


def test_every_unusable_checkpoint_is_one_line_truncated_text_class_count_model_or_pickled_code(trained, tmp_path):
    _, out = trained
    marker = tmp_path / "pwned"
    for case, path in bad_checkpoints(out / "best.pt", tmp_path, marker).items():
        with pytest.raises(CheckpointError) as err:
            checkpoint.load(path)
        message = str(err.value)
        assert str(path) in message and "\n" not in message and "weights_only=False" not in message, case
        assert len(message) < 400, (case, message)
    assert not marker.exists()   # weights_only refused the payload: nothing ran


def test_dogs_train_resume_from_an_unusable_checkpoint_is_one_error_line(tiny_imagefolder, trained, tmp_path):
    _, out = trained
    marker = tmp_path / "pwned"
    for case, path in bad_checkpoints(out / "best.pt", tmp_path, marker).items():
        run_dir = tmp_path / case
        run_dir.mkdir()
        (run_dir / "last.pt").write_bytes(path.read_bytes())
        code, _, err = run_main(train, ["--data", str(tiny_imagefolder), "--set", "model=cnn", "image_size=16",
                                        "epochs=8", "--out", str(run_dir), "--resume", "--device", "cpu"])
        assert code == 2 and err.startswith("dogs-train: error: ") and err.count("\n") == 1, (case, code, err)
    assert not marker.exists()


def test_resume_with_schedule_ema_and_mixing_repeats_a_straight_run_bit_for_bit(tiny_config, tmp_path, monkeypatch):
    """Cosine after warm-up, SGD-Nesterov, EMA, mixup + cutmix: Ctrl-C in epoch 3, resume = the straight run."""
    device = torch.device("cpu")
    config = {**tiny_config, "epochs": 4, "optimizer": "sgd", "lr": 0.05, "schedule": "cosine", "warmup_epochs": 1,
              "ema": 0.9, "mixup": 0.4, "cutmix": 1.0}
    straight = train.run(config, tmp_path / "straight", log=quiet, device=device)
    monkeypatch.setattr(engine, "evaluate", Interrupt(at=3))
    with pytest.raises(KeyboardInterrupt):
        train.run(config, tmp_path / "split", log=quiet, device=device)
    monkeypatch.undo()
    assert checkpoint.read(tmp_path / "split" / "last.pt")["epoch"] == 2
    resumed = train.run(config, tmp_path / "split", resume=True, log=quiet, device=device)
    assert [m["epoch"] for m in resumed["history"]] == [1, 2, 3, 4]
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "val_macro_f1")
    assert [[m[k] for k in keys] for m in resumed["history"]] == [[m[k] for k in keys] for m in straight["history"]]
    a, b = checkpoint.read(tmp_path / "straight" / "last.pt"), checkpoint.read(tmp_path / "split" / "last.pt")
    for part in ("model", "live"):  # the EMA weights (evaluated, saved) and the trained ones
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert a["scheduler"] == b["scheduler"] and a["ema_updates"] == b["ema_updates"] > 0
    assert not all(torch.equal(a["model"][k], a["live"][k]) for k in a["model"])  # the EMA is not the live model
    lrs = [g["lr"] for g in a["optimizer"]["param_groups"]]
    assert max(lrs) < 1e-9  # the cosine ran its course to 0 (a constant lr would still be 0.05)
    history = pd.read_csv(tmp_path / "split" / "history.csv")
    assert {"val_top5", "val_macro_f1"} <= set(history.columns) and len(history) == 4


def test_resume_with_another_recipe_is_refused(tiny_config, tmp_path):
    config = {**tiny_config, "epochs": 2, "schedule": "cosine"}
    train.run(config, tmp_path, log=quiet, device=torch.device("cpu"))
    with pytest.raises(CheckpointError, match=r"optimizer \(checkpoint: 'adam', now: 'adamw'\)"):
        train.run({**config, "optimizer": "adamw"}, tmp_path, resume=True, log=quiet)
    with pytest.raises(CheckpointError, match=r"epochs \(checkpoint: 2, now: 4; the cosine schedule spans them\)"):
        train.run({**config, "epochs": 4}, tmp_path, resume=True, log=quiet)


def test_resume_with_a_changed_lr_is_one_line_naming_both_values(tiny_imagefolder, tmp_path):
    """The optimizer's saved state holds the learning rate: a new lr would be silently dropped, so it is refused."""
    argv = ["--data", str(tiny_imagefolder), "--set", "model=cnn", "image_size=16", "batch_size=16", "lr=3e-3",
            "--out", str(tmp_path), "--device", "cpu"]
    assert run_main(train, [*argv, "--set", "epochs=1"])[0] is None   # main returns None when it trained
    code, _, message = run_main(train, [*argv, "--set", "epochs=2", "lr=1e-2", "optimizer=sgd", "--resume"])
    assert code == 2 and message.count("\n") == 1, message
    assert message.startswith(f"dogs-train: error: --resume {tmp_path / 'last.pt'}: the checkpoint is from another "
                              "run: optimizer (checkpoint: 'adam', now: 'sgd'); lr (checkpoint: 0.003, now: 0.01) "
                              "differ."), message
    assert "only epochs (schedule constant), cache_dir, channels_last, compile may change" in message
    assert message.rstrip().endswith("give the checkpoint's values: --set optimizer=adam lr=0.003; or start a new "
                                     "run with another --out"), message
    assert checkpoint.read(tmp_path / "last.pt")["epoch"] == 1   # nothing was overwritten
    # the checkpoint's values, as the message says: it continues
    assert run_main(train, [*argv, "--set", "epochs=2", "optimizer=adam", "lr=0.003", "--resume"])[0] is None
    assert checkpoint.read(tmp_path / "last.pt")["epoch"] == 2


def test_what_may_change_on_resume_is_one_list(tiny_config):
    """resume_problem: every config key not marked resume_may_change must match; epochs only grows, and only when the
    schedule does not span it."""
    from dogs.config import SCHEMA, resolve

    saved = resolve({**tiny_config, "epochs": 4})
    ckpt = {"config": saved, "classes": ["a", "b"], "root": tiny_config["data"], "epoch": 2}

    def problem(**changes):
        return checkpoint.resume_problem(ckpt, resolve({**saved, **changes}), ["a", "b"], tiny_config["data"])

    assert {key for key in SCHEMA if SCHEMA[key].resume_may_change} == {"epochs", "data", "cache_dir", "channels_last", "compile"}
    assert problem() is None
    assert problem(epochs=9, cache_dir="/elsewhere", channels_last=False, compile=True) is None
    assert problem(epochs=2) is None   # stop after the epochs already trained
    for key, value in {"lr": 0.1, "backbone_lr": 0.5, "weight_decay": 0.1, "batch_size": 8, "seed": 1,
                       "dropout": 0.1, "label_smoothing": 0.1, "mixup": 0.2, "augment": True, "precision": "fp32",
                       "metric": "val_loss", "feature_cache": False, "ema": 0.9}.items():
        why = problem(**{key: value, **({"mode": "min"} if key == "metric" else {})})
        assert why and f"{key} (checkpoint: {saved[key]!r}, now: {value!r})" in why, (key, why)
        assert f"--set {key}=" in why and "\n" not in why
    assert "epochs (checkpoint: 2 trained, now: 1)" in problem(epochs=1)
    ckpt["config"] = saved = resolve({**saved, "schedule": "onecycle", "warmup_epochs": 1})
    assert "epochs (checkpoint: 4, now: 6; the onecycle schedule spans them)" in problem(epochs=6)


def test_the_demo_picks_a_small_image_size_unless_one_is_given(tmp_path):
    """The 8x8 digits at 32 px (not 224), said in the demo's line; a given image_size is kept."""
    import json

    from dogs.data import DEMO_IMAGE_SIZE

    code, out, err = run_main(train, ["--set", "model=cnn", "epochs=1", "--out", str(tmp_path / "demo")])
    assert code is None, out[-2000:] + err[-2000:]
    assert json.loads((tmp_path / "demo" / "config.json").read_text())["image_size"] == DEMO_IMAGE_SIZE == 32
    assert "handwritten digits, at " in out and f"images resized to {DEMO_IMAGE_SIZE} px" in out
    code, out, err = run_main(train, ["--set", "model=cnn", "epochs=1", "image_size=16", "--out", str(tmp_path / "x")])
    assert code is None and json.loads((tmp_path / "x" / "config.json").read_text())["image_size"] == 16, err


def test_confusion_of_many_classes_draws_the_most_confused_pairs_and_keeps_the_matrix(tmp_path):
    """Above 30 classes: a bar chart of the top 20 off-diagonal counts; confusion.csv holds the whole matrix."""
    rng = np.random.default_rng(0)
    classes = [f"breed_{i}$x" for i in range(133)]   # a $ in a name is text, not mathtext
    confusion = rng.integers(0, 3, size=(133, 133))
    confusion[5, 7], confusion[9, 2] = 50, 40
    pairs = submission.most_confused(confusion, classes)
    assert pairs[:2] == [(classes[5], classes[7], 50), (classes[9], classes[2], 40)] and len(pairs) == 20
    assert all(true != predicted for true, predicted, _ in pairs)
    assert [c for *_, c in pairs] == sorted((c for *_, c in pairs), reverse=True)
    png = submission.save_confusion(confusion, classes, tmp_path / "confusion.png", title="single")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = pd.read_csv(tmp_path / "confusion.csv", index_col=0)
    assert list(saved.index) == classes and list(saved.columns) == classes and (saved.to_numpy() == confusion).all()
    assert submission.most_confused(np.eye(3, dtype=int) * 5, ["a", "b", "c"]) == []   # nothing confused: no pairs
    submission.save_confusion(np.eye(3, dtype=int), ["a", "b", "c"], tmp_path / "small.png")   # the matrix, as before
    assert (tmp_path / "small.csv").exists()
