"""Predictions for a submission: an ensemble of one is the model itself, mirror TTA is a mirror average."""
import logging
import shutil

import numpy as np
import pytest
import torch

from dogs import cache, data, models, submission
from dogs.config import resolve
from dogs.errors import CheckpointError

CPU = torch.device("cpu")


def cnn(tiny_imagefolder, seed, **values):
    config = resolve({"data": str(tiny_imagefolder), "model": "cnn", "image_size": 16, "head_width": 16,
                      "seed": seed, **values})
    torch.manual_seed(seed)
    return models.build_model(config, 3).eval(), config


def test_an_ensemble_of_one_predicts_what_the_model_predicts(tiny_imagefolder):
    files = data.test_files(tiny_imagefolder)
    model, config = cnn(tiny_imagefolder, 0)
    images = cache.cached_images(files, 16, cache.cache_root())
    single = submission.predict_probs(model, config, images, np.arange(len(files)), CPU)
    alone, ok = submission.ensemble_probs([(model, config)], files, CPU)
    assert ok.all() and np.array_equal(alone, single)
    # members with their own image size and normalization: the mean of their own outputs
    other, other_config = cnn(tiny_imagefolder, 1, image_size=24, normalize="imagenet")
    theirs = submission.predict_probs(other, other_config, cache.cached_images(files, 24, cache.cache_root()),
                                   np.arange(len(files)), CPU)
    both, _ = submission.ensemble_probs([(model, config), (other, other_config)], files, CPU)
    assert np.allclose(both, (single + theirs) / 2) and not np.allclose(both, single)


def test_tta_on_mirror_symmetric_images_equals_no_tta_and_differs_otherwise(tiny_imagefolder):
    model, config = cnn(tiny_imagefolder, 0)
    rng = np.random.default_rng(0)
    half = rng.integers(0, 256, size=(6, 16, 8, 3), dtype=np.uint8)
    symmetric = cache.CachedImages("sym", np.concatenate([half, half[:, :, ::-1]], axis=2), [])
    rows = np.arange(6)
    plain = submission.predict_probs(model, config, symmetric, rows, CPU)
    assert np.allclose(submission.predict_probs(model, config, symmetric, rows, CPU, tta=True), plain, atol=1e-6)
    lopsided = cache.CachedImages("lop", rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8), [])
    assert not np.allclose(submission.predict_probs(model, config, lopsided, rows, CPU, tta=True),
                           submission.predict_probs(model, config, lopsided, rows, CPU), atol=1e-6)


def test_submit_for_data_with_other_classes_is_refused_before_anything_is_written(tiny_imagefolder, tmp_path):
    # tune.best --data DIR with another data set of as many classes: was submission.csv and a grid titled with
    # the checkpoint's class names, then an error from the report
    model, config = cnn(tiny_imagefolder, 0)
    ckpt = {"config": config, "classes": ["cat", "circle", "square"]}
    with pytest.raises(CheckpointError, match=r"only in the checkpoint: \['cat'\], only in Validation/: \['triangle'\]"):
        submission.submit(model, ckpt, tmp_path / "out", device=CPU, report=True)
    assert not (tmp_path / "out").exists()


def test_numbered_class_folders_warn_that_class_is_an_index_not_the_number(tiny_imagefolder, tmp_path, caplog):
    root = tmp_path / "numbered"
    shutil.copytree(tiny_imagefolder, root)
    for split in ("Train", "Validation"):  # sorted: '1', '10', '2' -> Class 0, 1, 2
        for old, new in (("circle", "1"), ("square", "2"), ("triangle", "10")):
            (root / split / old).rename(root / split / new)
    model, config = cnn(root, 0)
    with caplog.at_level(logging.WARNING, logger="dogs"):
        written = submission.submit(model, {"config": config, "classes": ["1", "10", "2"]}, tmp_path / "out", device=CPU)
    assert written["submission"].exists()
    assert "Class in submission.csv is the index into their sorted names, not that number: 0 = '1', 1 = '10'" \
        in caplog.text


def test_an_unreadable_test_file_keeps_its_row_and_the_warning_names_it(tiny_imagefolder, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(tiny_imagefolder, root)
    (root / "Test" / "3.jpg").write_bytes(b"not a jpeg")
    model, config = cnn(root, 0)
    with caplog.at_level(logging.WARNING, logger="dogs"):
        written = submission.write_submission(model, config, root, tmp_path / "submission.csv", CPU)
    rows = written.read_text().splitlines()
    assert rows[0] == "Id,Class" and len(rows) == 1 + len(data.test_files(root)) and rows[4] == "3.jpg,0"
    # was: "1 Test file(s) unreadable; predicted class 0 for them", naming no file
    assert "1 Test file(s) unreadable (3.jpg); their rows in submission.csv say class 0, a guess" in caplog.text
