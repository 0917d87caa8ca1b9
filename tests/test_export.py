"""tune.best --export: ONNX Runtime and the torch.export program predict as the checkpoint does, for the CNN, a
frozen ResNet18 (its checkpoint holds only the tail) and an unfrozen EfficientNet-B0; the README's snippet runs."""
import contextlib
import io
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dogs import checkpoint, data, decode, classifier, models
from dogs.train import run
from tune import best
from conftest import draw, run_main

CPU = torch.device("cpu")
README = Path(__file__).resolve().parent.parent / "README.md"
MODELS = {   # random weights (weights: none), small images: seconds on a CPU
    "cnn": {"model": "cnn", "image_size": 16},
    "resnet18_frozen": {"model": "resnet18", "weights": "none", "unfreeze": 0, "image_size": 32},
    "efficientnet_b0_unfrozen": {"model": "efficientnet_b0", "weights": "none", "unfreeze": 5, "image_size": 32},
}


@pytest.fixture(scope="module")
def exported(tiny_imagefolder, tmp_path_factory):
    """{name: (checkpoint path, export folder)}: one epoch of each model, exported by tune.best --checkpoint."""
    made = {}
    for name, values in MODELS.items():
        folder = tmp_path_factory.mktemp(name)
        config = {"data": str(tiny_imagefolder), "batch_size": 16, "epochs": 1, "lr": 3e-3, "head_width": 16,
                  "seed": 0, **values}
        written = run(config, folder / "train", log=lambda *a: None)
        code, out, err = run_main(best, ["--checkpoint", str(written["checkpoint"]), "--export", str(folder / "model")])
        assert code == 0, err
        made[name] = (written["checkpoint"], folder / "model")
    return made


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_and_the_torch_program_predict_as_the_checkpoint(exported, tiny_imagefolder, name):
    path, folder = exported[name]
    ckpt = checkpoint.read(path)
    if name == "resnet18_frozen":   # the checkpoint left the frozen backbone out: the export put it back
        assert ckpt["frozen"] is not None and not any(k.startswith("frozen.") for k in ckpt["model"])
    predictor = classifier.Predictor.load(path, device=CPU)
    files = data.test_files(tiny_imagefolder)
    decoded = [predictor.decode(f) for f in files]
    expected = predictor.probs(decoded)
    size = ckpt["config"]["image_size"]
    images = np.stack([d[size] for d in decoded])
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    program = torch.export.load(folder / "model.pt2").module()
    for got in (session.run(["probabilities"], {"image": images})[0],
                session.run(["probabilities"], {"image": images[:1]})[0],   # any batch size
                program(torch.from_numpy(images))[1].detach().numpy()):
        assert np.array_equal(got.argmax(1), expected[:len(got)].argmax(1))
        assert np.abs(got - expected[:len(got)]).max() <= 1e-4
    # the same through dogs.classifier.ExportedPredictor (tune.serve --export DIR): ONNX Runtime behind one interface
    from_folder = classifier.ExportedPredictor(folder).predict(files, k=3)
    for (top, error), p in zip(from_folder, expected, strict=True):
        assert error is None and top[0][1] == p.argmax() and [q for *_, q in top] == pytest.approx(
            [p[i] for _, i, _ in top], abs=1e-4)
    # the weights file holds the whole network, the frozen prefix included
    model, _ = checkpoint.load(path)
    weights = load_file(folder / "model.safetensors")
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_the_card_says_what_the_model_needs_and_where_it_came_from(exported, tiny_imagefolder):
    path, folder = exported["resnet18_frozen"]
    ckpt = checkpoint.read(path)
    card = json.loads((folder / "model_card.json").read_text())
    assert card["classes"] == ["circle", "square", "triangle"]
    assert card["input"] == {"name": "image", "dtype": "uint8", "shape": ["batch", 32, 32, 3], "layout": "NHWC",
                             "color": "RGB", "size": 32}
    assert card["normalization"]["mean"] == list(models.IMAGENET_MEAN)
    assert card["normalization"]["std"] == list(models.IMAGENET_STD)
    assert card["config"] == ckpt["config"] and card["source"]["checkpoint"] == str(path)
    assert card["source"]["epoch"] == 1 and card["source"]["metrics"]["val_acc"] == ckpt["metrics"]["val_acc"]
    # per-class accuracy on Validation, recomputed: the same accuracy training reported
    per_class = card["validation"]["per_class"]
    assert [row["class"] for row in per_class] == card["classes"] and sum(r["images"] for r in per_class) == 24
    assert card["validation"]["val_acc"] == pytest.approx(ckpt["metrics"]["val_acc"])
    assert card["versions"]["torch"] == torch.__version__.split("+")[0] and card["versions"]["onnxruntime"]
    assert card["onnx"]["opset"] >= 18
    markdown = (folder / "MODEL_CARD.md").read_text()
    assert "| triangle | 8 |" in markdown and '"model": "resnet18"' in markdown and "- 2: triangle" in markdown


def test_preprocess_py_decodes_as_training_did_without_this_project(exported, tmp_path):
    _, folder = exported["cnn"]
    source = (folder / "preprocess.py").read_text()
    assert not re.search(r"^\s*(import|from) (dogs|tune)\b", source, re.M)
    load_rgb = runpy.run_path(str(folder / "preprocess.py"))["load_rgb"]
    rng = np.random.default_rng(3)
    rotated = draw("triangle", rng, (48, 30))
    exif = rotated.getexif()
    exif[0x0112] = 8
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    Image.fromarray(np.asarray(draw("circle", rng).convert("L"), np.uint16) * 200).save(tmp_path / "deep.png")
    clear = draw("square", rng).convert("RGBA")
    clear.putalpha(60)
    clear.save(tmp_path / "clear.png")
    draw("circle", rng, (400, 300)).save(tmp_path / "big.jpg")   # JPEG draft: decoded at a reduced scale
    draw("square", rng).convert("P").save(tmp_path / "palette.gif")
    for name in ("rotated.jpg", "deep.png", "clear.png", "big.jpg", "palette.gif"):
        for size in (16, 40):
            assert np.array_equal(load_rgb(tmp_path / name, size), decode.load_rgb(tmp_path / name, size)), name


def test_the_readme_snippet_predicts_a_photo_as_the_checkpoint_does(exported, tmp_path):
    path, folder = exported["efficientnet_b0_unfrozen"]
    snippet = re.search(r"<!-- onnx-snippet[^\n]*-->\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len([line for line in snippet.splitlines() if not line.startswith(("import", "from"))]) == 5
    os.symlink(folder, tmp_path / "model")
    draw("circle", np.random.default_rng(4), (90, 70)).save(tmp_path / "photo.jpg")
    cwd, out = os.getcwd(), io.StringIO()
    try:
        os.chdir(tmp_path)
        with contextlib.redirect_stdout(out):
            exec(compile(snippet, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = [line.rsplit(" ", 1) for line in out.getvalue().splitlines()]
    predictor = classifier.Predictor.load(path, device=CPU)
    [(top, error)] = predictor.predict([tmp_path / "photo.jpg"], k=5)
    assert error is None and [name for name, _ in printed] == [name for name, _, _ in top]
    assert [float(p) for _, p in printed] == pytest.approx([p for _, _, p in top], abs=2e-3)   # printed to 3 places


def snapshot(folder):
    """{relative path: bytes or 'folder'} of everything under `folder`: what must not change."""
    return {str(p.relative_to(folder)): "folder" if p.is_dir() else p.read_bytes() for p in Path(folder).rglob("*")}


def test_only_an_earlier_exports_own_files_are_replaced_and_anything_beside_them_is_refused(exported, tmp_path):
    path, folder = exported["cnn"]
    card = json.loads((folder / "model_card.json").read_text())
    assert set(card["files"]) == {p.name for p in folder.iterdir()}   # the card lists every file of the export
    # a user's folder; an earlier export with the user's app and notes put beside it; a card listing the user's src/
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    shutil.copytree(folder, tmp_path / "beside")
    (tmp_path / "beside" / "src").mkdir()
    (tmp_path / "beside" / "src" / "app.py").write_text("keep me")
    (tmp_path / "beside" / "notes.txt").write_text("keep me")
    (tmp_path / "forged").mkdir()
    (tmp_path / "forged" / "model_card.json").write_text(json.dumps({**card, "files": {"src": "", **card["files"]}}))
    (tmp_path / "forged" / "src").mkdir()
    (tmp_path / "forged" / "src" / "app.py").write_text("keep me")
    for name, named in (("mine", "notes.txt"), ("beside", "notes.txt, src"), ("forged", "src")):
        before = snapshot(tmp_path / name)
        code, _, err = run_main(best, ["--checkpoint", str(path), "--export", str(tmp_path / name)])
        assert code == 2 and err.count("\n") == 1 and f"the folder holds {named}, which no earlier export" in err, err
        assert snapshot(tmp_path / name) == before
    # an earlier export, with the __pycache__ that `from preprocess import load_rgb` leaves in it, is replaced
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "preprocess.cpython-311.pyc").write_bytes(b"")
    before = (folder / "model_card.json").stat().st_mtime_ns
    code, _, err = run_main(best, ["--checkpoint", str(path), "--export", str(folder)])
    assert code == 0, err
    assert (folder / "model_card.json").stat().st_mtime_ns != before and (folder / "model.onnx").is_file()
    assert {p.name for p in folder.iterdir()} == set(card["files"])
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []   # no temporary folder left
    for argv, message in ((["--export", str(tmp_path / "x"), "--tta"], "--export writes one model"),
                          (["--export", str(tmp_path / "x"), "--submit"], "run on their own")):
        code, _, err = run_main(best, ["--checkpoint", str(path), *argv])
        assert code == 2 and message in err, err


def test_the_current_folder_or_one_above_it_is_never_an_exports_target(exported, tmp_path, monkeypatch):
    path, folder = exported["cnn"]
    shutil.copytree(folder, tmp_path / "model")   # an earlier export, where the user's shell is
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path / "model")
    for given in (".", "./", "../model/.", str(tmp_path / "model"), "..", "/"):
        code, _, err = run_main(best, ["--checkpoint", str(path), "--export", given])
        assert code == 2 and err.count("\n") == 1 and f"--export {given}: that is the current folder" in err, err
    assert snapshot(tmp_path) == before


def test_sigterm_during_an_export_leaves_no_temporary_folder(exported, tmp_path):
    path, _ = exported["resnet18_frozen"]   # seconds of torch.export and ONNX: time to be stopped in the middle
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tune.best", "--checkpoint", str(path), "--export", "model"],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PYTHONPATH": str(README.parent)})
        try:
            deadline = time.monotonic() + 240
            while not any(p.name.startswith(".model.tmp") for p in tmp_path.iterdir()):   # the export has begun
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err").read_text()
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
        finally:
            proc.kill()
    lines = (tmp_path / "err").read_text()
    assert code == 143 and "dogs-best: export interrupted: nothing written" in lines and "Traceback" not in lines, lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["err"]
