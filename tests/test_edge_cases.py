"""Training and data edge cases of #17: a last training batch of one, val_top5 on few classes, an empty Test/,
entries that are not what their names say, tune.best --retrain on other classes and its report/."""
import logging
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from dogs import data, train
from dogs.batches import Batches
from tune import best, search
from conftest import TWO_TRIAL_SPACE, make_imagefolder, run_main

ONE_TRIAL_SPACE = TWO_TRIAL_SPACE.replace("samples: 2, epochs: 2, grace_period: 2", "samples: 1, epochs: 1, grace_period: 1")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """5 images per class in Train (15: a batch of 7 leaves one), 3 in Validation, 2 in Test; no awkward files."""
    return make_imagefolder(tmp_path_factory.mktemp("edge") / "data", n_train=5, n_val=3, n_test=2, awkward=False)


@pytest.fixture(scope="module")
def experiment(small_data, tmp_path_factory):
    """A finished 1-trial search on small_data."""
    folder = tmp_path_factory.mktemp("edge-search")
    (folder / "space.yaml").write_text(ONE_TRIAL_SPACE)
    code, out, err = run_main(search, ["--space", str(folder / "space.yaml"), "--data", str(small_data),
                                       "--storage", str(folder / "runs"), "--name", "e"])
    assert code == 0, out[-3000:] + err[-3000:]
    return folder / "runs" / "e"


def copy_of(small_data, tmp_path):
    return shutil.copytree(small_data, tmp_path / "data", symlinks=True)


# --- a last training batch of one image ---

def test_a_shuffled_epoch_drops_a_last_batch_of_one_and_evaluation_sees_every_image():
    images = np.zeros((15, 4, 4, 3), dtype=np.uint8)
    rows = lambda batches: [len(y) for _, y in batches]   # noqa: E731
    train_batches = Batches(images, np.arange(15) % 3, np.arange(15), 7, torch.device("cpu"), lambda x: x,
                            shuffle=True, seed=0)
    assert rows(train_batches) == [7, 7] and len(train_batches) == 2
    assert rows(Batches(images, np.arange(15) % 3, np.arange(15), 7, torch.device("cpu"), lambda x: x)) == [7, 7, 1]
    assert rows(Batches(images, np.arange(15) % 3, np.arange(15), 1, torch.device("cpu"), lambda x: x,
                        shuffle=True, seed=0)) == [1] * 15   # batch_size 1: nothing to drop to


def test_a_trainable_batchnorm_at_1x1_trains_when_the_last_batch_would_hold_one_image(small_data, tmp_path):
    # resnet18 at 32 px: layer4 (trained with unfreeze 1) sees 1x1 maps; 15 images in batches of 7 leave one,
    # which BatchNorm cannot normalize (was: a raw ValueError traceback)
    result = train.run({"data": str(small_data), "model": "resnet18", "weights": "none", "unfreeze": 1,
                        "image_size": 32, "batch_size": 7, "epochs": 1, "seed": 0}, tmp_path,
                       log=lambda *_: None, device=torch.device("cpu"))
    assert len(result["history"]) == 1 and np.isfinite(result["history"][0]["train_loss"])


# --- val_top5 on 5 classes or fewer ---

def test_val_top5_on_five_classes_or_fewer_is_refused_before_training(small_data, tmp_path):
    code, out, err = run_main(train, ["--data", str(small_data), "--out", str(tmp_path / "t"), "--set", "model=cnn",
                                      "image_size=16", "metric=val_top5"])
    assert code == 2 and "metric val_top5" in err and "3 classes" in err and err.count("\n") == 1, err
    assert not (tmp_path / "t" / "last.pt").exists()
    (tmp_path / "space.yaml").write_text(ONE_TRIAL_SPACE.replace("seed: 0}", "seed: 0, metric: val_top5}"))
    code, out, err = run_main(search, ["--space", str(tmp_path / "space.yaml"), "--data", str(small_data),
                                       "--storage", str(tmp_path / "runs"), "--name", "top5"])
    assert code == 2 and "val_top5 is 1.0 at every epoch" in err and "3 classes" in err, out + err
    assert not (tmp_path / "runs" / "top5").exists()


# --- an empty Test/ ---

def test_an_empty_test_folder_is_named_by_dogs_train_and_tune_best(small_data, experiment, tmp_path):
    root = copy_of(small_data, tmp_path)
    shutil.rmtree(root / "Test")
    (root / "Test").mkdir()
    code, out, err = run_main(train, ["--data", str(root), "--out", str(tmp_path / "t"), "--set", "model=cnn",
                                      "image_size=16", "epochs=1"])
    assert code in (0, None) and f"no submission.csv: {root / 'Test'} holds no image files" in out, out + err
    code, out, err = run_main(best, ["--experiment", str(experiment), "--submit", "--data", str(root),
                                     "--out", str(tmp_path / "b")])
    assert code == 0 and f"no submission.csv: {root / 'Test'} holds no image files" in out, out + err
    assert "no Test/ folder" not in out


# --- entries that are not what their names say ---

def test_train_as_a_link_to_itself_is_named_a_link_loop(small_data, tmp_path):
    root = copy_of(small_data, tmp_path)
    shutil.rmtree(root / "Train")
    os.symlink("Train", root / "Train")
    with pytest.raises(data.DataError, match=r"Train is a link that loops back on itself \(-> Train\), not a folder"):
        data.resolve_root(root)


def test_a_dangling_link_or_a_fifo_named_x_png_is_named_for_what_it_is(small_data, tmp_path, caplog):
    root = copy_of(small_data, tmp_path)
    os.symlink(tmp_path / "gone.png", root / "Train" / "circle" / "x.png")
    os.mkfifo(root / "Train" / "square" / "x.png")
    os.mkfifo(root / "Test" / "9.png")
    with caplog.at_level(logging.WARNING, logger="dogs"):
        _, files, _ = data.labeled_split(root, data.TRAIN)
        test = data.test_files(root)
    assert len(files) == 15 and len(test) == 2
    text = caplog.text
    assert f"x.png is a link to {tmp_path / 'gone.png'}, which does not exist" in text
    assert "square/x.png is a FIFO (named pipe)" in text and "Test/9.png is a FIFO (named pipe)" in text
    assert "names are not images" not in text   # was: counted as names that are not images (.png)


# --- tune.best --retrain ---

def test_retrain_on_data_with_other_classes_is_refused_naming_them(small_data, experiment, tmp_path):
    root = copy_of(small_data, tmp_path)
    for split in ("Train", "Validation"):
        shutil.copytree(root / split / "circle", root / split / "oval")
    code, out, err = run_main(best, ["--experiment", str(experiment), "--retrain", "--data", str(root),
                                     "--out", str(tmp_path / "b")])
    assert code == 2 and "its classes are not the search's" in err and "only in" in err and "'oval'" in err, err
    assert not (tmp_path / "b" / "history.csv").exists()


def test_retrain_writes_the_report_as_submit_does(experiment, tmp_path):
    code, out, err = run_main(best, ["--experiment", str(experiment), "--retrain", "--out", str(tmp_path)])
    assert code == 0, err
    accuracy = pd.read_csv(tmp_path / "report" / "accuracy.csv")
    assert list(accuracy.predictor) == ["single"] and (tmp_path / "report" / "confusion.png").exists()
    assert len(pd.read_csv(tmp_path / "submission.csv")) == 2
