"""Labeled splits, decoded: a data folder's Train and Validation as cached images plus labels."""
from dataclasses import dataclass

import numpy as np

from . import cache, data


@dataclass
class Split:
    """One labeled split, decoded: cached images plus labels, restricted to readable files."""
    images: cache.CachedImages
    labels: np.ndarray
    index: np.ndarray  # rows of images.images that decoded


def load_split(root, split, config):
    classes, files, labels = data.labeled_split(root, split)
    images = cache.cached_images(files, config["image_size"], cache.cache_root(config["cache_dir"]))
    labels, reasons = np.asarray(labels), {row: f"{f} ({e})" for row, f, e in images.bad}
    # a class whose every file is unreadable would train as a class with 0 images
    for label, name in enumerate(classes):
        rows = np.flatnonzero(labels == label)
        if not images.ok[rows].any():
            raise data.DataError(f"{root / split / name}: none of the {len(rows)} image(s) of class {name!r} "
                                 f"could be read (e.g. {reasons[rows[0]]}); fix or remove the folder")
    return classes, Split(images, labels, np.flatnonzero(images.ok))


def load_splits(config, log_fn=print):
    """(root, classes, train Split, validation Split) for the config's data (or the demo)."""
    root, is_demo = data.resolve_root(config["data"], config["cache_dir"])
    if is_demo:
        log_fn(f"no data folder given: using the built-in demo, scikit-learn's handwritten digits, at {root}; "
               f"images resized to {config['image_size']} px")
    # both splits listed and checked against each other before anything is decoded
    train_classes, train_files, _ = data.labeled_split(root, data.TRAIN)
    val_classes, val_files, _ = data.labeled_split(root, data.VALIDATION)
    data.check_same_classes(train_classes, val_classes, root)
    data.warn_shared_files(train_files, val_files)
    classes, train = load_split(root, data.TRAIN, config)
    _, val = load_split(root, data.VALIDATION, config)
    return root, classes, train, val


def holdout_splits(split, fraction, classes):
    """(the rest, the held-out part) of a validation Split (dogs.data.holdout_mask over its readable images)."""
    held = data.holdout_mask(split.labels[split.index], fraction, classes)
    return Split(split.images, split.labels, split.index[~held]), Split(split.images, split.labels, split.index[held])


def concat_splits(a, b):
    """Train + Validation as one split (for the final retrain)."""
    images = cache.CachedImages(f"{a.images.key}+{b.images.key}", np.concatenate([a.images.images, b.images.images]),
                                a.images.bad + [[row + len(a.images.images), f, e] for row, f, e in b.images.bad])
    return Split(images, np.concatenate([a.labels, b.labels]),
                 np.concatenate([a.index, b.index + len(a.images.images)]))
