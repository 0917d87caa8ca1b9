"""Data: layout errors, awkward files, decode cache, test-file order, the digits demo."""
import logging
import os
import re
import shutil
import unicodedata

import numpy as np
import pytest
from PIL import Image

from conftest import make_imagefolder
from dogs import cache, data, decode
from dogs.splits import load_splits
from dogs.config import resolve


def test_awkward_files_are_skipped_and_reported_or_converted(tiny_imagefolder, tmp_path, caplog):
    classes, files, labels = data.labeled_split(tiny_imagefolder, "Train")
    assert classes == ["circle", "square", "triangle"]
    assert not any(f.name == "notes.txt" for f in files)  # stray non-image files are not even listed
    images = cache.cached_images(files, 16, tmp_path)
    bad = {os.path.basename(f) for _, f, _ in images.bad}
    assert bad == {"corrupt.jpg", "truncated.jpg"}
    assert "skipped 2 unreadable image(s)" in caplog.text and "corrupt.jpg" in caplog.text
    assert images.ok.sum() == len(files) - 2
    # grayscale, CMYK, RGBA and palette images decode to 3-channel RGB
    for name in ("gray.png", "cmyk.jpg", "rgba.png", "palette.gif"):
        row = images.images[[f.name for f in files].index(name)]
        assert row.shape == (16, 16, 3) and row.max() > 0
    rgb = decode.load_rgb(tiny_imagefolder / "Train" / "circle" / "gray.png", 16)
    assert (rgb[..., 0] == rgb[..., 1]).all()


def test_cache_is_built_once_and_rebuilt_when_a_file_changes(tmp_path):
    root = make_imagefolder(tmp_path / "d", n_train=3, n_val=1, n_test=0, awkward=False)
    _, files, _ = data.labeled_split(root, "Train")
    first = cache.cached_images(files, 16, tmp_path / "c")
    again = cache.cached_images(files, 16, tmp_path / "c")
    assert again.key == first.key and again.build_seconds == first.build_seconds  # metadata of the one build
    os.utime(files[0], ns=(0, 0))  # a changed modification time is a changed data set
    changed = cache.cached_images(files, 16, tmp_path / "c")
    assert changed.key != first.key
    assert np.array_equal(changed.images, first.images)
    assert cache.cached_images(files, 24, tmp_path / "c").images.shape[1:] == (24, 24, 3)



def test_cache_is_rebuilt_when_a_file_is_rewritten_keeping_its_size_and_mtime(tmp_path):
    # `exiftool -P -Orientation=6`: the same bytes but one, the modification time kept; the photo now stands upright
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :16] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 1
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    before = cache.cached_images([path], 16, tmp_path / "c").images[0].copy()
    st = os.stat(path)
    raw = path.read_bytes()
    tag = b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x01"  # big-endian IFD entry: Orientation, SHORT, 1, value 1
    assert raw.count(tag) == 1
    path.write_bytes(raw.replace(tag, tag[:-2] + b"\x00\x06"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = cache.cached_images([path], 16, tmp_path / "c").images[0]
    assert before[:, :4, 0].mean() > 200 and before[:, -4:, 0].mean() < 50     # red on the left
    assert after[:4, :, 0].mean() > 200 and after[-4:, :, 0].mean() < 50       # turned: red on top

def test_test_files_are_in_numeric_order(tiny_imagefolder):
    names = [p.name for p in data.test_files(tiny_imagefolder)]
    assert [int(n.split(".")[0]) for n in names] == list(range(12))  # 2 before 10, unlike a string sort


def test_non_integer_test_names_fall_back_to_natural_order(tmp_path, caplog):
    (tmp_path / "Test").mkdir()
    for name in ("img10.jpg", "img2.jpg", "3.jpg"):
        (tmp_path / "Test" / name).write_bytes(b"")
    assert [p.name for p in data.test_files(tmp_path)] == ["3.jpg", "img2.jpg", "img10.jpg"]
    assert "not integers" in caplog.text


@pytest.mark.parametrize("breakage, message", [
    ("no_root", "does not exist"),
    ("no_validation", "has no Validation/ folder"),
    ("empty_class", "class folder(s) with no images: ['square']"),
    ("class_mismatch", "only in Train: ['triangle']"),
    ("no_classes", "has no class folders"),
    ("all_corrupt", "none of the"),
])
def test_bad_layouts_give_clear_errors(tmp_path, breakage, message):
    root = make_imagefolder(tmp_path / "d", n_train=2, n_val=1, n_test=0, awkward=False)
    if breakage == "no_root":
        root = tmp_path / "missing"
    elif breakage == "no_validation":
        shutil.rmtree(root / "Validation")
    elif breakage == "empty_class":
        for f in (root / "Train" / "square").iterdir():
            f.unlink()
    elif breakage == "class_mismatch":
        shutil.rmtree(root / "Validation" / "triangle")
    elif breakage == "no_classes":
        shutil.rmtree(root / "Train")
        (root / "Train").mkdir()
    elif breakage == "all_corrupt":
        for f in (root / "Validation").rglob("*.*"):
            f.write_bytes(b"garbage")
    with pytest.raises(data.DataError, match=re.escape(message)) as err:
        load_splits(resolve({"data": str(root), "model": "cnn", "image_size": 16}), log_fn=lambda m: None)
    if breakage != "all_corrupt":
        assert "Train/<class>" in str(err.value) or "only in" in str(err.value) or "no images" in str(err.value)


def test_demo_is_real_digits_in_imagefolder_layout(tmp_path):
    root, is_demo = data.resolve_root(None, tmp_path)
    assert is_demo
    classes, files, _ = data.labeled_split(root, "Train")
    assert classes == [str(d) for d in range(10)]
    n_val = len(data.labeled_split(root, "Validation")[1])
    n_test = len(data.test_files(root))
    assert len(files) + n_val + n_test == 1797
    assert (root / "test_labels.csv").read_text().count("\n") == n_test + 1


def test_hidden_and_nas_folders_inside_a_class_are_not_walked_and_stray_files_are_warned(tmp_path, caplog):
    root = make_imagefolder(tmp_path / "d", n_train=2, n_val=1, n_test=0, awkward=False)
    circle = root / "Train" / "circle"
    # copies a notebook, a NAS or a zip tool leave behind: each would silently add an image to the class
    for junk in (".ipynb_checkpoints", "@eaDir/0.png", "__MACOSX", "sub/.thumbnails"):
        (circle / junk).mkdir(parents=True)
        shutil.copy(circle / "0.png", circle / junk / "0-copy.png")
    (root / "Train" / ".ipynb_checkpoints").mkdir()          # a hidden folder in Train/ is no class
    shutil.copy(circle / "0.png", circle / "sub" / "kept.png")  # a plain subfolder is part of its class
    shutil.copy(circle / "0.png", circle / "photo.jfif")       # a JPEG as browsers save it: an image name
    shutil.copy(circle / "0.png", root / "Train" / "loose.png")  # in no class folder
    for name in ("IMG_1.heic", "notes.txt", "Thumbs.db", "._0.png", ".DS_Store"):
        (circle / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="dogs"):
        classes, files, _ = data.labeled_split(root, "Train")
    assert classes == ["circle", "square", "triangle"]
    assert sorted(str(f.relative_to(circle)) for f in files if circle in f.parents) == [
        "0.png", "1.jpg", "photo.jfif", "sub/kept.png"]
    assert "holds 1 image(s) outside the class folders (e.g. loose.png)" in caplog.text
    assert "skipping 2 file(s) whose names are not images (.heic: 1, .txt: 1;" in caplog.text  # not the junk


def test_test_files_whose_names_are_not_images_are_warned_they_get_no_row(tmp_path, caplog):
    (tmp_path / "Test").mkdir()
    for name in ("0.jpg", "1.HEIC", "Thumbs.db"):
        (tmp_path / "Test" / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="dogs"):
        assert [p.name for p in data.test_files(tmp_path)] == ["0.jpg"]
    assert "skipping 1 file(s) whose names are not images (.heic: 1;" in caplog.text


def test_class_names_that_differ_only_in_unicode_normalization_say_so(tmp_path):
    root = make_imagefolder(tmp_path / "d", n_train=1, n_val=1, n_test=0, awkward=False)
    (root / "Train" / "circle").rename(root / "Train" / unicodedata.normalize("NFD", "café"))   # as macOS writes it
    (root / "Validation" / "circle").rename(root / "Validation" / unicodedata.normalize("NFC", "café"))
    with pytest.raises(data.DataError, match="only in Train: .*differ only in how accents are encoded"):
        data.check_same_classes(data.labeled_split(root, "Train")[0], data.labeled_split(root, "Validation")[0], root)


def test_validation_images_that_are_train_images_too_are_warned_and_class_mismatch_is_found_before_decoding(
        tmp_path, caplog, monkeypatch):
    root = make_imagefolder(tmp_path / "d", n_train=2, n_val=1, n_test=0, awkward=False)
    os.symlink(root / "Train" / "circle" / "1.jpg", root / "Validation" / "circle" / "linked.jpg")
    os.link(root / "Train" / "square" / "0.png", root / "Validation" / "square" / "hard.png")
    config = resolve({"data": str(root), "model": "cnn", "image_size": 16, "cache_dir": str(tmp_path / "c")})
    with caplog.at_level(logging.WARNING, logger="dogs"):
        load_splits(config, log_fn=lambda m: None)
    assert "2 Validation image(s) are Train images too" in caplog.text and "not held out" in caplog.text
    shutil.rmtree(root / "Validation" / "triangle")
    monkeypatch.setattr(cache, "cached_images", lambda *a, **k: pytest.fail("decoded before the classes were checked"))
    with pytest.raises(data.DataError, match=re.escape("only in Train: ['triangle']")):
        load_splits(config, log_fn=lambda m: None)
