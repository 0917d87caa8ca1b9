"""tune.best --predict: photos by class name from a checkpoint, decoded and predicted as the submission path does."""
import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dogs import checkpoint, data, decode, inference, predict
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
    written = predict.submit(model, ckpt, tmp_path / "s", device=CPU, tta=tta)
    submission = pd.read_csv(written["submission"])
    files = data.test_files(trained["data"])
    probs, ok = predict.ensemble_probs([(model, ckpt["config"])], files, CPU, tta)
    assert ok.all() and len(rows) == len(files) == len(submission)
    for f, expected, p in zip(files, submission.itertuples(), probs):
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
            (["--checkpoint", ckpt, "--predict", str(trained["data"] / "Test"), "--top-k", "0"], "--top-k 0: "),
            (["--checkpoint", ckpt, "--predict", str(tmp_path / "none")], "no image files there"),
            (["--checkpoint", ckpt, "--submit"], "--checkpoint FILE is for --predict and --export"),
            (["--checkpoint", ckpt, "--predict", ckpt, "--ensemble", "2"], "not with --checkpoint"),
            (["--checkpoint", ckpt, "--predict", ckpt, "--data", str(trained["data"])], "--data is not read"),
            (["--checkpoint", str(tmp_path / "x.pt"), "--predict", str(trained["data"] / "Test")], "no checkpoint at"),
    ):
        code, out, err = run_main(best, [*argv, "--out", str(tmp_path / "out")])
        assert code == 2 and err.startswith("dogs-best: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_batches_bytes_and_paths_give_the_same_predictions(trained, monkeypatch):
    model = inference.Predictor.load(trained["checkpoint"], device=CPU)
    files = data.test_files(trained["data"])
    whole = model.predict(files, k=3)

    def same(results):   # the same classes in the same order, probabilities equal but for float rounding
        return all([(n, i) for n, i, _ in top] == [(n, i) for n, i, _ in other] and error is None and
                   [p for *_, p in top] == pytest.approx([p for *_, p in other], abs=1e-6)
                   for (top, error), (other, _) in zip(results, whole, strict=True))

    monkeypatch.setattr(inference, "BATCH", 5)   # 12 photos in batches of 5, 5 and 2
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
    model = inference.Predictor.load(trained["checkpoint"], device=CPU)
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
        ensemble = inference.Predictor(members, tta=tta, device=CPU)
        assert ensemble.sizes == [16, 24]
        expected, ok = predict.ensemble_probs([(m, c["config"]) for m, c in members], files, CPU, tta)
        got = ensemble.probs([ensemble.decode(f) for f in files])
        assert ok.all() and np.abs(got - expected).max() <= 1e-6
    with pytest.raises(CheckpointError, match="different classes"):
        inference.Predictor([members[0], (members[1][0], {**members[1][1], "classes": ["a", "b", "c"]})])
