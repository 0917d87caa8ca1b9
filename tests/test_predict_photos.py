"""tune.best --predict: photos by class name from a checkpoint, decoded and predicted as the submission path does."""
import csv
import io
import logging
import os
import shutil
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dogs import checkpoint, data, decode, classifier, submission
from dogs.errors import CheckpointError
from dogs.train import run
from tune import best
from conftest import CLASSES, draw, run_main

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tiny_imagefolder, tmp_path_factory):
    """dogs.train's best.pt of the CNN on the tiny shapes (3 epochs at 16 px: learns them)."""
    out = tmp_path_factory.mktemp("trained")
    config = {"data": str(tiny_imagefolder), "model": "cnn", "image_size": 16, "batch_size": 16, "epochs": 3,
              "lr": 3e-3, "seed": 0}
    written = run(config, out, log=lambda *a: None)
    return {"checkpoint": written["checkpoint"], "out": out, "data": tiny_imagefolder}


def predicted(folder):
    return pd.read_csv(folder / "predictions.csv")


@pytest.mark.parametrize("tta", [False, True])
def test_a_photo_predicts_the_same_through_predict_as_through_the_submission(trained, tmp_path, tta):
    code, out, err = run_main(best, ["--checkpoint", str(trained["checkpoint"]), "--predict",
                                     str(trained["data"] / "Test"), "--out", str(tmp_path / "p")]
                              + ["--tta"] * tta)
    assert code == 0, err
    rows = predicted(tmp_path / "p").set_index("file")
    model, ckpt = checkpoint.load(trained["checkpoint"])
    written = submission.submit(model, ckpt, tmp_path / "s", device=CPU, tta=tta)
    table = pd.read_csv(written["submission"])
    files = data.test_files(trained["data"])
    probs, ok = submission.ensemble_probs([(model, ckpt["config"])], files, CPU, tta)
    assert ok.all() and len(rows) == len(files) == len(table)
    for f, expected, p in zip(files, table.itertuples(), probs):
        row = rows.loc[str(f)]
        assert f.name == expected.Id and row.class_index == expected.Class == p.argmax()
        assert row["class"] == ckpt["classes"][expected.Class]
        assert row.probability == pytest.approx(p.max(), abs=1e-6)
        assert [row[f"top{r}_prob"] for r in (1, 2, 3)] == pytest.approx(sorted(p, reverse=True), abs=1e-6)
    assert "Test/0.png  " in out and "top-3" in out and "--top-k 5: the model knows 3 classes" in out


def test_the_names_are_right_well_above_chance_on_an_easy_set(trained, tmp_path):
    # a folder walked at any depth: Validation/<class>/*: the predicted name must be the folder's (chance: 1/3)
    code, out, err = run_main(best, ["--checkpoint", str(trained["checkpoint"]), "--predict",
                                     str(trained["data"] / "Validation"), "--out", str(tmp_path)])
    assert code == 0, err
    rows = predicted(tmp_path)
    truth = rows.file.map(lambda f: f.split("/")[-2])
    assert len(rows) == 3 * 8 and set(truth) == set(CLASSES)
    assert (rows["class"] == truth).mean() >= 0.9


def test_unreadable_files_are_rows_with_their_reason_and_folders_skip_what_is_not_an_image(trained, tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub" / ".hidden").mkdir(parents=True)
    rng = np.random.default_rng(1)
    draw("circle", rng).save(photos / "a.png")
    draw("square", rng).save(photos / "sub" / "b.jpg")
    draw("square", rng).save(photos / "sub" / ".hidden" / "c.jpg")   # a hidden folder: not walked
    (photos / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (photos / "notes.txt").write_text("not an image")                # not an image name: skipped in a folder
    named = tmp_path / "named.txt"
    named.write_text("named on the command line: tried, and unreadable")
    code, out, err = run_main(best, ["--checkpoint", str(trained["checkpoint"]), "--predict", str(photos),
                                     str(named), str(tmp_path / "nothere*.jpg"), str(photos / "a.png"),
                                     "--top-k", "7", "--out", str(tmp_path / "out")])
    assert code == 0, err
    rows = predicted(tmp_path / "out")
    assert list(rows.file) == [str(photos / "a.png"), str(photos / "sub" / "b.jpg"), str(photos / "sub" / "broken.jpg"),
                               str(named), str(tmp_path / "nothere*.jpg")]   # a.png given twice: one row
    assert rows.error.notna().tolist() == [False, False, True, True, True]
    assert "UnidentifiedImageError" in rows.error[2] and "no such file or folder" in rows.error[4]
    assert rows.loc[:1, "class"].tolist() == ["circle", "square"]
    # --top-k above the class count: all 3 classes, with a note
    assert [c for c in rows.columns if c.startswith("top")] == ["top1", "top1_prob", "top2", "top2_prob", "top3",
                                                                "top3_prob"]
    assert "--top-k 7: the model knows 3 classes; showing all 3" in out
    assert "unreadable: UnidentifiedImageError" in out and "2 photo(s) predicted, 3 unreadable" in out


def test_mistakes_are_one_line_and_write_nothing(trained, tmp_path):
    ckpt = str(trained["checkpoint"])
    for argv, message in (
            (["--checkpoint", ckpt, "--predict", str(trained["data"] / "Test"), "--top-k", "0"], "--top-k: 0 is out of range"),
            (["--checkpoint", ckpt, "--predict", str(tmp_path / "none")], "no image files there"),
            (["--checkpoint", ckpt, "--submit"], "--checkpoint FILE is for --predict and --export"),
            (["--checkpoint", ckpt, "--predict", ckpt, "--ensemble", "2"], "not with --checkpoint"),
            (["--checkpoint", ckpt, "--predict", ckpt, "--data", str(trained["data"])], "--data is not read"),
            (["--checkpoint", str(tmp_path / "x.pt"), "--predict", str(trained["data"] / "Test")], "no checkpoint at"),
    ):
        code, out, err = run_main(best, [*argv, "--out", str(tmp_path / "out")])
        assert code == 2 and err.startswith("dogs-best: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def within(seconds, call):
    """call()'s result, failing (not hanging) when it has not returned within `seconds` (a FIFO opened for reading
    waits for a writer forever: the thread is left behind, a daemon)."""
    done = []
    thread = threading.Thread(target=lambda: done.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert done, f"still running after {seconds} s: blocked"
    return done[0]


def test_a_fifo_or_a_device_named_on_the_command_line_is_refused_and_never_blocks(trained, tmp_path, caplog):
    ckpt, photos = str(trained["checkpoint"]), str(trained["data"] / "Test")
    os.mkfifo(tmp_path / "pipe.jpg")
    for given, what in ((tmp_path / "pipe.jpg", "a FIFO (named pipe)"), ("/dev/zero", "a character device")):
        code, _, err = within(120, lambda: run_main(best, ["--checkpoint", ckpt, "--predict", photos, str(given),
                                                           "--out", str(tmp_path / "out")]))
        assert code == 2 and err.count("\n") == 1 and f"--predict {given}: it is {what}, not an image" in err, err
    assert not (tmp_path / "out").exists()
    # a glob that matches the FIFO: skipped with a warning, as in a folder; the photos beside it are predicted
    draw("circle", np.random.default_rng(2)).save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING, logger="dogs"):
        code, _, err = within(120, lambda: run_main(best, ["--checkpoint", ckpt, "--predict", str(tmp_path / "*.*"),
                                                           "--out", str(tmp_path / "out")]))
    assert code == 0, err
    assert list(predicted(tmp_path / "out").file) == [str(tmp_path / "a.png")]
    assert f"{tmp_path / 'pipe.jpg'} is a FIFO (named pipe)" in caplog.text


def test_predictions_csv_replaces_only_an_earlier_one_and_out_must_be_a_folder(trained, tmp_path):
    ckpt, photos = str(trained["checkpoint"]), str(trained["data"] / "Test")
    for _ in range(2):   # the second run replaces the first one's predictions.csv
        code, _, err = run_main(best, ["--checkpoint", ckpt, "--predict", photos, "--out", str(tmp_path / "ours")])
        assert code == 0, err
    first = (tmp_path / "ours" / "predictions.csv").read_bytes()
    code, _, err = run_main(best, ["--checkpoint", ckpt, "--predict", photos + "/0.png", "--out", str(tmp_path / "ours")])
    one = (tmp_path / "ours" / "predictions.csv").read_bytes()
    assert code == 0 and len(predicted(tmp_path / "ours")) == 1 and one != first
    # the user's predictions.csv, a folder or a link of that name: refused, kept as they are
    for name, make in (("file", lambda p: p.write_text("id,label\n1,cat\n")), ("folder", lambda p: p.mkdir()),
                       ("link", lambda p: p.symlink_to(tmp_path / "ours" / "predictions.csv"))):
        (tmp_path / name).mkdir()
        make(tmp_path / name / "predictions.csv")
        code, _, err = run_main(best, ["--checkpoint", ckpt, "--predict", photos, "--out", str(tmp_path / name)])
        assert code == 2 and err.count("\n") == 1 and "predictions.csv would be replaced, and it is not what" in err, err
    assert (tmp_path / "file" / "predictions.csv").read_text() == "id,label\n1,cat\n"
    assert (tmp_path / "folder" / "predictions.csv").is_dir() and (tmp_path / "link" / "predictions.csv").is_symlink()
    assert (tmp_path / "ours" / "predictions.csv").read_bytes() == one   # the link's target was not written either
    # --out naming a file
    code, _, err = run_main(best, ["--checkpoint", ckpt, "--predict", photos, "--out", str(tmp_path / "file" /
                                                                                          "predictions.csv")])
    assert code == 2 and err.count("\n") == 1 and "it is a file, not a folder" in err, err


NAMES = ["cr\r.png", "lf\n.png", "crlf\r\n.png", "tab\t.png", "quote\".png", "comma,.png", " space .png",
         "\r.png", "v\x0btab.png", "sep\x1c.png", "line\u2028.png"]   # 11 names a CSV row could break on


def test_names_with_control_characters_are_one_row_each_in_predictions_and_submission_csv(trained, tmp_path):
    data_copy = tmp_path / "data"
    shutil.copytree(trained["data"], data_copy, ignore=shutil.ignore_patterns("Test"))
    (data_copy / "Test").mkdir()
    rng = np.random.default_rng(5)
    for name in NAMES:
        draw("square", rng).save(data_copy / "Test" / name, format="PNG")
    code, _, err = run_main(best, ["--checkpoint", str(trained["checkpoint"]), "--predict", str(data_copy / "Test"),
                                   "--out", str(tmp_path / "out")])
    assert code == 0, err
    model, ckpt = checkpoint.load(trained["checkpoint"])
    written = submission.submit(model, ckpt, tmp_path / "out", data_root=data_copy, device=CPU)["submission"]
    for path, column, expected in ((tmp_path / "out" / "predictions.csv", "file",
                                    [str(data_copy / "Test" / n) for n in NAMES]), (written, "Id", NAMES)):
        read = pd.read_csv(path, dtype=str, keep_default_na=False)[column]
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        assert sorted(read) == sorted(expected) and sorted(r[column] for r in rows) == sorted(expected)


def test_batches_bytes_and_paths_give_the_same_predictions(trained, monkeypatch):
    model = classifier.Predictor.load(trained["checkpoint"], device=CPU)
    files = data.test_files(trained["data"])
    whole = model.predict(files, k=3)

    def same(results):   # the same classes in the same order, probabilities equal but for float rounding
        return all([(n, i) for n, i, _ in top] == [(n, i) for n, i, _ in other] and error is None and
                   [p for *_, p in top] == pytest.approx([p for *_, p in other], abs=1e-6)
                   for (top, error), (other, _) in zip(results, whole, strict=True))

    monkeypatch.setattr(classifier, "BATCH", 5)   # 12 photos in batches of 5, 5 and 2
    seen = []
    assert same(model.predict(files, k=3, progress=seen.append)) and seen == [5, 5, 2]
    # a request's bytes (tune.serve) decode as the file does
    assert same(model.predict([f.read_bytes() for f in files], k=3))


def test_awkward_photos_decode_as_training_decoded_them(trained, tmp_path):
    # EXIF-rotated, 16-bit and transparent photos: the predictor's decode is load_rgb's, for a path or its bytes
    rng = np.random.default_rng(2)
    rotated = draw("triangle", rng, (40, 24))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    Image.fromarray((np.asarray(draw("circle", rng).convert("L"), np.uint16) * 257)).save(tmp_path / "deep.png")
    rgba = draw("square", rng).convert("RGBA")
    rgba.putalpha(90)
    rgba.save(tmp_path / "clear.png")
    model = classifier.Predictor.load(trained["checkpoint"], device=CPU)
    for name in ("rotated.jpg", "deep.png", "clear.png"):
        expected = decode.load_rgb(tmp_path / name, 16)
        assert np.array_equal(model.decode(tmp_path / name)[16], expected)
        assert np.array_equal(model.decode(io.BytesIO((tmp_path / name).read_bytes()))[16], expected)


def test_an_ensemble_of_members_with_their_own_size_and_normalization_is_the_submissions_average(tiny_imagefolder):
    from dogs import models
    from dogs.config import resolve

    members = []
    for seed, values in ((0, {}), (1, {"image_size": 24, "normalize": "imagenet"})):
        config = resolve({"data": str(tiny_imagefolder), "model": "cnn", "image_size": 16, "head_width": 16,
                          "seed": seed, **values})
        torch.manual_seed(seed)
        members.append((models.build_model(config, 3).eval(), {"config": config, "classes": list(CLASSES)}))
    files = data.test_files(tiny_imagefolder)
    for tta in (False, True):
        ensemble = classifier.Predictor(members, tta=tta, device=CPU)
        assert ensemble.sizes == [16, 24]
        expected, ok = submission.ensemble_probs([(m, c["config"]) for m, c in members], files, CPU, tta)
        got = ensemble.probs([ensemble.decode(f) for f in files])
        assert ok.all() and np.abs(got - expected).max() <= 1e-6
    with pytest.raises(CheckpointError, match="different classes"):
        classifier.Predictor([members[0], (members[1][0], {**members[1][1], "classes": ["a", "b", "c"]})])
