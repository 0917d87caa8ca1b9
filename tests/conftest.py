"""Shared fixtures: a tiny generated ImageFolder with every awkward file a real one has; run_main."""
import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image, ImageDraw

# property-based tests: a few seconds of examples in CI; HYPOTHESIS_PROFILE=thorough for many more
settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CLASSES = ("circle", "square", "triangle")
COLORS = {"circle": (220, 40, 40), "square": (40, 200, 60), "triangle": (50, 70, 230)}


def draw(kind, rng, size=None):
    """An easy image of class `kind`: a coloured shape on a noisy background, random size and place."""
    w, h = size or (int(rng.integers(24, 72)), int(rng.integers(24, 72)))
    background = rng.integers(90, 160, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(background)
    d = ImageDraw.Draw(img)
    s = int(min(w, h) * rng.uniform(0.5, 0.8))
    x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
    box, color = [x, y, x + s, y + s], COLORS[kind]
    if kind == "circle":
        d.ellipse(box, fill=color)
    elif kind == "square":
        d.rectangle(box, fill=color)
    else:
        d.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=color)
    return img


def make_imagefolder(root, n_train=24, n_val=8, n_test=12, seed=0, awkward=True):
    """Train/<class>/, Validation/<class>/ and a numbered Test/ (0.jpg ... 11.png) of easy shape images.

    With `awkward`, Train/circle also holds a corrupt JPEG, a truncated JPEG, a grayscale PNG, a CMYK JPEG,
    an RGBA PNG, a palette GIF and a stray text file.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("Train", n_train), ("Validation", n_val)):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(kind, rng).save(folder / (f"{i}.jpg" if i % 2 else f"{i}.png"), quality=90)
    test = root / "Test"
    test.mkdir(parents=True, exist_ok=True)
    for i in range(n_test):
        draw(CLASSES[i % 3], rng).save(test / (f"{i}.jpg" if i % 2 else f"{i}.png"))
    if awkward:
        odd = root / "Train" / "circle"
        (odd / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + bytes(200))
        buf = io.BytesIO()
        draw("circle", rng, (64, 64)).save(buf, format="JPEG")
        (odd / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        draw("circle", rng).convert("L").save(odd / "gray.png")
        draw("circle", rng).convert("CMYK").save(odd / "cmyk.jpg")
        rgba = draw("circle", rng).convert("RGBA")
        rgba.putalpha(200)
        rgba.save(odd / "rgba.png")
        draw("circle", rng).convert("P").save(odd / "palette.gif")
        (odd / "notes.txt").write_text("not an image")
    return root


# a finished search in seconds: 2 trials x 2 epochs of the CNN at 16 px, no early stopping
TWO_TRIAL_SPACE = """
search: {samples: 2, epochs: 2, grace_period: 2, seed: 0}
params:
  model: cnn
  image_size: 16
  batch_size: 16
  lr: {loguniform: [1e-3, 1e-2]}
"""


def run_main(module, argv):
    """(exit code, stdout, stderr) of module.main(argv), in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Every test run decodes into its own cache folder, never the user's ~/.cache."""
    os.environ["DOGS_CACHE"] = str(tmp_path_factory.mktemp("dogs-cache"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    yield


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory):
    """A tiny ImageFolder (3 easy classes, awkward files included) shared by the whole session; do not modify."""
    return make_imagefolder(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture
def tiny_config(tiny_imagefolder):
    """A config that trains the CNN on the tiny folder in seconds on a CPU."""
    return {"data": str(tiny_imagefolder), "model": "cnn", "image_size": 16, "batch_size": 16, "epochs": 3,
            "lr": 3e-3, "seed": 0}
