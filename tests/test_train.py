"""The epoch loop end to end: it learns, keeps the best weights, checkpoints round-trip, runs resume."""
import numpy as np
import pandas as pd
import pytest
import torch

from dogs import checkpoint, data, engine, predict, train


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
    again = predict.submit(model, ckpt, tmp_path, device=torch.device("cpu"))
    assert pd.read_csv(again["submission"]).equals(pd.read_csv(result["submission"]))


def test_checkpoints_hold_no_pickled_objects(trained):
    _, out = trained
    torch.load(out / "best.pt", weights_only=True)  # raises on any pickled class
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.read(out / "missing")


def test_best_weights_are_restored_when_a_later_epoch_is_worse(tiny_config, tmp_path, monkeypatch):
    scores = iter([0.5, 0.9, 0.3, 0.4])
    real_evaluate = engine.evaluate

    def scripted_evaluate(*args):
        loss, _ = real_evaluate(*args)
        return loss, next(scores)

    monkeypatch.setattr(engine, "evaluate", scripted_evaluate)
    result = train.run({**tiny_config, "epochs": 4}, tmp_path, log=quiet, device=torch.device("cpu"))
    best, last = checkpoint.read(tmp_path / "best.pt"), checkpoint.read(tmp_path / "last.pt")
    assert best["epoch"] == 2 and last["epoch"] == 4
    assert not all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    # the submission was written by the restored model: it matches best.pt, not last.pt
    model, ckpt = checkpoint.load(tmp_path / "best.pt")
    redo = predict.submit(model, ckpt, tmp_path / "redo", device=torch.device("cpu"))
    assert pd.read_csv(redo["submission"]).equals(pd.read_csv(result["submission"]))
    assert result["best_val_acc"] == 0.9


def test_resume_continues_at_the_next_epoch_with_the_same_result(tiny_config, tmp_path):
    device = torch.device("cpu")
    straight = train.run({**tiny_config, "epochs": 4}, tmp_path / "straight", log=quiet, device=device)
    train.run({**tiny_config, "epochs": 2}, tmp_path / "split", log=quiet, device=device)
    resumed = train.run({**tiny_config, "epochs": 4}, tmp_path / "split", resume=True, log=quiet, device=device)
    assert [m["epoch"] for m in resumed["history"]] == [3, 4]
    best_epoch = max(straight["history"], key=lambda m: m["val_acc"])["epoch"]  # the first of equals
    assert checkpoint.read(tmp_path / "split" / "best.pt")["epoch"] == best_epoch
    assert pd.read_csv(resumed["submission"]).equals(pd.read_csv(straight["submission"]))
    for a, b in zip(straight["history"][2:], resumed["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_resume_keeps_a_best_epoch_from_before_the_interruption(tiny_config, tmp_path, monkeypatch):
    scores = iter([0.5, 0.9, 0.3, 0.4])  # the best epoch (2) comes before the resume at epoch 3
    real_evaluate = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *args: (real_evaluate(*args)[0], next(scores)))
    device = torch.device("cpu")
    train.run({**tiny_config, "epochs": 2}, tmp_path, log=quiet, device=device)
    resumed = train.run({**tiny_config, "epochs": 4}, tmp_path, resume=True, log=quiet, device=device)
    assert checkpoint.read(tmp_path / "best.pt")["epoch"] == 2 and resumed["best_val_acc"] == 0.9
    model, ckpt = checkpoint.load(tmp_path / "best.pt")
    redo = predict.submit(model, ckpt, tmp_path / "redo", device=device)
    assert pd.read_csv(redo["submission"]).equals(pd.read_csv(resumed["submission"]))


def test_train_on_val_trains_on_both_splits(tiny_config, tmp_path):
    run = engine.Run({**tiny_config, "epochs": 1}, device=torch.device("cpu"), train_on_val=True, log_fn=quiet)
    train_only = engine.Run({**tiny_config, "epochs": 1}, device=torch.device("cpu"), log_fn=quiet)
    assert len(run.train_batches.index) == len(train_only.train_batches.index) + len(train_only.val_batches.index)


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
    code, _, err = run_main(train, ["--data", str(tmp_path), "--set", "model=cnn"])
    assert code == 2 and "has no Train/ folder" in err, err


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
