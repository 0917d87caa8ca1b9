"""Decode images as a person sees them; layouts that cannot train are errors; links and Test/ names are defined."""
import logging
import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import draw, make_imagefolder
from dogs import data, decode
from dogs.config import resolve
from dogs.splits import load_splits


def halves(width=40, height=20):
    """Left half red, right half blue: where red lands after decoding shows the orientation applied."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("orientation, red_on_top", [(6, True), (8, False)])
def test_exif_orientation_6_and_8_is_applied(tmp_path, orientation, red_on_top):
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: turn 90 degrees clockwise to view (left side up); 8: counter-clockwise
    path = tmp_path / f"phone{orientation}.jpg"
    halves().save(path, exif=exif, quality=95)
    rgb = decode.load_rgb(path, 16).astype(int)
    top, bottom = rgb[:8], rgb[8:]
    red_top = top[..., 0].mean() > top[..., 2].mean() + 100
    red_bottom = bottom[..., 0].mean() > bottom[..., 2].mean() + 100
    assert (red_top, red_bottom) == (red_on_top, not red_on_top)


@pytest.mark.parametrize("mode, suffix", [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif"), ("F", ".tif")])
def test_16_bit_and_float_gradient_decodes_to_a_gradient_not_two_values(tmp_path, mode, suffix):
    ramp = np.tile(np.linspace(0, 1, 64), (8, 1))
    values = {"I;16": (ramp * 65535).astype(np.uint16), "I;16B": (ramp * 65535).astype(">u2"),
              "I": (ramp * 65535).astype(np.int32), "F": ramp.astype(np.float32)}[mode]
    path = tmp_path / f"gradient{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == mode
    row = decode.load_rgb(path, 64)[4, :, 0].astype(int)
    assert len(np.unique(row)) > 50  # a gradient, not 0 and 255
    assert row[0] <= 3 and row[-1] >= 252 and (np.diff(row) >= 0).all()
    assert abs(row[32] - 128) <= 6


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.new("L", (8, 8), 100), (100, 100, 100)),
    (lambda: Image.new("RGB", (8, 8), (200, 10, 10)).convert("P", palette=Image.Palette.ADAPTIVE), (200, 10, 10)),
    (lambda: Image.new("RGBA", (8, 8), (0, 0, 0, 0)), (255, 255, 255)),  # transparent: white, not black
    (lambda: Image.new("LA", (8, 8), (0, 0)), (255, 255, 255)),
    (lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
])
def test_existing_modes_still_decode_to_the_colour_a_viewer_shows(tmp_path, make, expected):
    img = make()
    path = tmp_path / ("x.jpg" if img.mode == "CMYK" else "x.png")
    img.save(path, quality=100)
    rgb = decode.load_rgb(path, 8).astype(int)
    assert np.abs(rgb - expected).max() <= 3, (img.mode, rgb[0, 0])


def load(root):
    return load_splits(resolve({"data": str(root), "model": "cnn", "image_size": 16}), log_fn=lambda m: None)


def test_class_folder_whose_every_file_is_unreadable_is_an_error_naming_it(tmp_path):
    root = make_imagefolder(tmp_path / "d", n_train=3, n_val=1, n_test=0, awkward=False)
    for f in (root / "Train" / "square").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(data.DataError, match=re.escape(str(root / "Train" / "square")) + ".*none of the 3"):
        load(root)


def test_one_class_only_is_an_error(tmp_path):
    root = make_imagefolder(tmp_path / "d", n_train=2, n_val=1, n_test=0, awkward=False)
    for split in ("Train", "Validation"):
        for name in ("square", "triangle"):
            for f in (root / split / name).iterdir():
                f.unlink()
            (root / split / name).rmdir()
    with pytest.raises(data.DataError, match="one class folder \\(circle\\): nothing to classify"):
        load(root)


@pytest.mark.parametrize("link, target", [
    ("Train/cycle", "../Train"),          # a class folder that is the split itself
    ("Train/circle/again", ".."),         # a subfolder that loops to the split
    ("Train/circle/self", "."),           # a subfolder that loops to its own class
    ("Train/copy", "../Validation/circle"),  # a class folder that is another split's class
    ("Train/circle/up", "../../.."),      # a subfolder that holds the whole data folder
])
def test_symlink_loop_into_the_data_tree_is_skipped_with_a_warning(tmp_path, caplog, link, target):
    root = make_imagefolder(tmp_path / "d", n_train=2, n_val=1, n_test=0, awkward=False)
    os.symlink(target, root / link)
    with caplog.at_level(logging.WARNING, logger="dogs"):
        classes, files, _ = data.labeled_split(root, "Train")
    assert classes == ["circle", "square", "triangle"] and len(files) == 6
    assert f"skipping the folder link {root / link}" in caplog.text


def test_links_out_of_the_data_tree_stay_legitimate(tmp_path, caplog):
    elsewhere = make_imagefolder(tmp_path / "elsewhere", n_train=2, n_val=1, n_test=0, awkward=False)
    extra = tmp_path / "photos" / "blob"
    extra.mkdir(parents=True)
    draw("circle", np.random.default_rng(0)).save(extra / "0.png")
    root = tmp_path / "d"
    root.mkdir()
    os.symlink(elsewhere / "Train", root / "Train")  # the README's `ln -s ~/dogImages/train Train`
    os.symlink(elsewhere / "Validation", root / "Validation")
    os.symlink(extra, elsewhere / "Train" / "blob")  # a class folder linked from elsewhere
    with caplog.at_level(logging.WARNING, logger="dogs"):
        classes, files, _ = data.labeled_split(root, "Train")
    assert classes == ["blob", "circle", "square", "triangle"] and len(files) == 7
    assert "skipping" not in caplog.text


def test_test_names_with_the_same_number_are_ordered_by_number_then_name_with_a_warning(tmp_path, caplog):
    (tmp_path / "Test").mkdir()
    for name in ("1.png", "2.png", "01.png", "0.png", "001.png"):
        (tmp_path / "Test" / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="dogs"):
        names = [p.name for p in data.test_files(tmp_path)]
    assert names == ["0.png", "001.png", "01.png", "1.png", "2.png"]
    assert "same number" in caplog.text and "001.png" in caplog.text


def test_files_in_test_subfolders_are_skipped_with_a_warning(tmp_path, caplog):
    (tmp_path / "Test" / "more").mkdir(parents=True)
    (tmp_path / "Test" / "0.png").write_bytes(b"")
    (tmp_path / "Test" / "more" / "1.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="dogs"):
        assert [p.name for p in data.test_files(tmp_path)] == ["0.png"]
    assert "skipping its subfolder(s) ['more']" in caplog.text
