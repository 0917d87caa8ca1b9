"""Any class folder name a file system allows works in every picture and report: math signs ($, \\, _, %, {}),
emoji and 250 characters go through training, the search, the prediction grid, the confusion matrix,
per_class.csv and the submission unchanged."""
from pathlib import Path

import pandas as pd
import pytest

from dogs import train
from tune import best, search
from conftest import CLASSES, TWO_TRIAL_SPACE, draw, run_main

import numpy as np

# matplotlib reads $...$ as math and \ as a command: each of these crashed the grid (price_$5_$10 did in #17)
NAMES = ["price_$5_$10", "back\\slash $x$", "50%_{x}^2", "dog 🐶 ünï", "n" * 250]


def named_imagefolder(root, names, n_train=6, n_val=3, n_test=4, seed=0):
    """Train/Validation/<name>/ of easy shapes (class i draws CLASSES[i % 3]) and a numbered Test/."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("Train", n_train), ("Validation", n_val)):
        for i, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(n):
                draw(CLASSES[i % 3], rng).save(folder / f"{k}.png")
    (root / "Test").mkdir()
    for k in range(n_test):
        draw(CLASSES[k % 3], rng).save(root / "Test" / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    return named_imagefolder(tmp_path_factory.mktemp("names") / "data", NAMES)


def test_dogs_train_with_math_signs_emoji_and_long_class_names(odd_data, tmp_path):
    code, out, err = run_main(train, ["--data", str(odd_data), "--out", str(tmp_path), "--set", "model=cnn",
                                      "image_size=16", "batch_size=8", "epochs=1"])
    assert code in (0, None), err[-2000:]
    assert (tmp_path / "predictions.png").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "submission.csv")) == 4


def test_search_then_best_submit_with_math_signs_emoji_and_long_class_names(odd_data, tmp_path):
    (tmp_path / "space.yaml").write_text(TWO_TRIAL_SPACE.replace("samples: 2, epochs: 2, grace_period: 2", "samples: 1, epochs: 1, grace_period: 1"))
    code, out, err = run_main(search, ["--space", str(tmp_path / "space.yaml"), "--data", str(odd_data),
                                       "--storage", str(tmp_path / "runs"), "--name", "odd"])
    assert code == 0, out[-2000:] + err[-2000:]
    code, out, err = run_main(best, ["--experiment", str(tmp_path / "runs" / "odd"), "--submit",
                                     "--out", str(tmp_path / "out")])
    assert code == 0, err[-2000:]
    report = tmp_path / "out" / "report"
    assert (report / "confusion.png").stat().st_size > 0 and (tmp_path / "out" / "predictions.png").exists()
    assert list(pd.read_csv(report / "per_class.csv", keep_default_na=False)["class"]) == sorted(NAMES)
