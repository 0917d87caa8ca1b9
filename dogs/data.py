"""ImageFolder layout: find the images of Train/ Validation/ [Test/], decode one to RGB, build the digits demo."""
import logging
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

log = logging.getLogger("dogs")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
TRAIN, VALIDATION, TEST = "Train", "Validation", "Test"
LAYOUT = (
    "expected layout:\n"
    "  ROOT/Train/<class>/*.jpg        (one folder per class)\n"
    "  ROOT/Validation/<class>/*.jpg   (the same class folders)\n"
    "  ROOT/Test/0.jpg, 1.jpg, ...     (optional, unlabeled, for submission.csv)"
)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error (skipped and reported), not grey pixels


class DataError(ValueError):
    """The data folder does not have the layout we need; the message says what to fix."""


def default_cache_dir():
    return Path(os.environ.get("DOGS_CACHE") or Path.home() / ".cache" / "dogs-tune")


def resolve_root(data, cache_dir=None):
    """(root, is_demo): `data` checked as an ImageFolder root, or the built-in digits demo when it is None."""
    if data is None:
        return demo_digits(Path(cache_dir) if cache_dir else default_cache_dir()), True
    root = Path(os.path.abspath(Path(data).expanduser()))  # trials run in their own folders: no relative paths
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {LAYOUT}")
    for split in (TRAIN, VALIDATION):
        if not (root / split).is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise DataError(f"{root} has no {split}/ folder (folders found: {found}); {LAYOUT}")
    return root, False


def is_image_name(path):
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def labeled_split(root, split):
    """(classes, files, labels) of ROOT/split/<class>/*; a class folder without images is an error."""
    folder = Path(root) / split
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class folders; {LAYOUT}")
    files, labels, empty = [], [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*") if p.is_file() and is_image_name(p))
        if not found:
            empty.append(name)
        files += found
        labels += [label] * len(found)
    if empty:
        raise DataError(f"{folder}: class folder(s) with no images: {empty} "
                        f"(image extensions: {sorted(IMAGE_EXTENSIONS)}); remove them or add images")
    return classes, files, labels


def check_same_classes(train_classes, val_classes, root):
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DataError(f"{root}: Train/ and Validation/ must have the same class folders; "
                        f"only in Train: {only_train}, only in Validation: {only_val}")


def _natural_key(path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.stem)]


def test_files(root):
    """Files of ROOT/Test in submission order: by the integer in their name (0.jpg, 1.jpg, ..., 10.jpg).

    Names that are not plain integers are ordered naturally (img2 before img10) and a warning says so;
    their Id in submission.csv is still the file name. Returns [] when there is no Test/ folder.
    """
    folder = Path(root) / TEST
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and is_image_name(p)]
    if all(p.stem.isdigit() for p in files):
        return sorted(files, key=lambda p: int(p.stem))
    odd = sorted(p.name for p in files if not p.stem.isdigit())
    log.warning("Test/ has %d file name(s) that are not integers (e.g. %s); ordering them naturally by name",
                len(odd), odd[:3])
    return sorted(files, key=_natural_key)


def load_rgb(path, size):
    """Decode one image to an RGB uint8 array of shape (size, size, 3); raises on a corrupt file."""
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: let libjpeg decode at a reduced scale when the target is small
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)  # transparent pixels become white, not black
        img = img.convert("RGB").resize((size, size), Image.BILINEAR, reducing_gap=3.0)
        return np.asarray(img, dtype=np.uint8)


def demo_digits(cache_dir):
    """scikit-learn's 1,797 real handwritten digits (8x8, 10 classes) written once as an ImageFolder.

    Split 70/15/15 into Train/<digit>/, Validation/<digit>/ and a numbered Test/ whose answers are kept
    in test_labels.csv beside it.
    """
    root = Path(cache_dir) / "demo-digits"
    if (root / "test_labels.csv").exists():
        return root
    from filelock import FileLock
    from sklearn.datasets import load_digits
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if (root / "test_labels.csv").exists():
            return root
        digits = load_digits()
        order = np.random.default_rng(0).permutation(len(digits.images))
        n_train, n_val = int(0.7 * len(order)), int(0.15 * len(order))
        tmp = root.with_name(root.name + ".tmp")
        for i, idx in enumerate(order):
            pixels = (digits.images[idx] * (255 / 16)).astype(np.uint8)
            label = int(digits.target[idx])
            if i < n_train + n_val:
                split = TRAIN if i < n_train else VALIDATION
                path = tmp / split / str(label) / f"{idx}.png"
            else:
                path = tmp / TEST / f"{i - n_train - n_val}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(path)
        test_idx = order[n_train + n_val:]
        lines = ["Id,Class"] + [f"{i}.png,{digits.target[idx]}" for i, idx in enumerate(test_idx)]
        (tmp / "test_labels.csv").write_text("\n".join(lines) + "\n")
        os.replace(tmp, root)
    return root
