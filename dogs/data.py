"""ImageFolder layout: find the images of Train/ Validation/ [Test/], build the digits demo."""
import errno
import logging
import math
import os
import re
import stat
import time
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image

from .cache import cache_errors, cache_root
from .errors import ConfigError, DataError
from .files import atomic_path, build_once

log = logging.getLogger("dogs")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".avif", ".tif", ".tiff",
                    ".ppm", ".pgm"}
# never walked: hidden folders (.ipynb_checkpoints, .thumbnails) and what NAS, zip and OS tools leave beside photos
# (Synology's @eaDir holds a thumbnail of every photo: walking it would add each image again, at thumbnail size)
SKIPPED_FOLDERS = {"@eaDir", "__MACOSX", "$RECYCLE.BIN", "System Volume Information"}
JUNK_FILES = {"thumbs.db", "desktop.ini"}  # not images, and not worth a warning (nor are hidden files: ._x.jpg)
TRAIN, VALIDATION, TEST = "Train", "Validation", "Test"
LAYOUT = (
    "expected layout:\n"
    "  ROOT/Train/<class>/*.jpg        (one folder per class)\n"
    "  ROOT/Validation/<class>/*.jpg   (the same class folders)\n"
    "  ROOT/Test/0.jpg, 1.jpg, ...     (optional, unlabeled, for submission.csv)"
)


def resolve_root(data, cache_dir=None):
    """(root, is_demo): `data` checked as an ImageFolder root, or the built-in digits demo when it is None."""
    if data is None:
        return demo_digits(cache_root(cache_dir)), True
    root = Path(os.path.abspath(Path(data).expanduser()))  # trials run in their own folders: no relative paths
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {LAYOUT}")
    for split in (TRAIN, VALIDATION):
        if not (root / split).is_dir() and os.path.lexists(root / split):   # a file, a FIFO, a link loop, ...
            raise DataError(f"{root / split} is {what_it_is(root / split)}, not a folder; {LAYOUT}")
        if not (root / split).is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise DataError(f"{root} has no {split}/ folder (folders found: {found}); {LAYOUT}")
    return root, False


def what_it_is(path):
    """What is at `path`, in words, for a message about an entry that is not the file or folder expected."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if not path.is_symlink():
            return f"unreadable ({err.strerror})"
        target = os.readlink(path)
        if err.errno == errno.ELOOP:
            return f"a link that loops back on itself (-> {target})"
        return f"a link to {target}, which does not exist" if err.errno == errno.ENOENT else \
            f"a link to {target}, which cannot be read ({err.strerror})"
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    return next((name for test, name in kinds if test(mode)), "not a file")


def is_image_name(path):
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def is_skipped_folder(name):
    return name.startswith(".") or name in SKIPPED_FOLDERS


def is_junk(path):
    return path.name.startswith(".") or path.name.lower() in JUNK_FILES


def warn_not_images(folder, others):
    """One warning for the files under `folder` skipped because their names are not images (.heic, .txt, ...), and
    one for the entries named as images that are not files (a dangling link, a FIFO, a link loop)."""
    not_files = [p for p in others if is_image_name(p)]
    if not_files:
        log.warning("%s: skipping %d entr%s named as an image that %s not a file: %s", folder, len(not_files),
                    "y" if len(not_files) == 1 else "ies", "is" if len(not_files) == 1 else "are",
                    "; ".join(f"{p} is {what_it_is(p)}" for p in not_files[:3]) + ("; ..." if len(not_files) > 3 else ""))
    others = [p for p in others if not is_image_name(p)]
    if not others:
        return
    counts = {}
    for p in others:
        counts[p.suffix.lower() or p.name] = counts.get(p.suffix.lower() or p.name, 0) + 1
    log.warning("%s: skipping %d file(s) whose names are not images (%s; e.g. %s); image extensions: %s",
                folder, len(others), ", ".join(f"{ext}: {n}" for ext, n in sorted(counts.items())), others[0],
                " ".join(sorted(IMAGE_EXTENSIONS)))


def _split_folders(root):
    """Real locations of the split folders: a folder link that resolves into one points back into the data tree."""
    folders = [Path(root) / split for split in (TRAIN, VALIDATION, TEST)]
    return [os.path.realpath(f) for f in folders if f.is_dir()]


def _inside(path, folders):
    return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def _skip_link(link, tree, visited):
    """True (with a warning) for a folder link into the data tree, to a folder holding it, or already walked."""
    target = os.path.realpath(link)
    if _inside(target, tree) or any(_inside(f, [target]) for f in tree) or target in visited:
        log.warning("skipping the folder link %s -> %s: it points back into the data tree (a loop or a copy); "
                    "link only folders outside the data folder", link, target)
        return True
    return False


def image_files(folder, tree, walked=None, others=None):
    """Image files under `folder` (any depth), sorted. Folder links are followed unless they loop back into `tree`.

    Hidden and system folders (is_skipped_folder) are not walked. Every folder walked is appended to `walked`,
    every other file that is not junk (is_junk) to `others` (when given).
    """
    found, visited = [], {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        if walked is not None:
            walked.append(dirpath)
        # prune hidden and system folders, links back into the data tree and loops; remember every real folder walked
        dirnames[:] = [d for d in dirnames if not is_skipped_folder(d) and not (
            os.path.islink(os.path.join(dirpath, d)) and _skip_link(os.path.join(dirpath, d), tree, visited))]
        visited.update(os.path.realpath(os.path.join(dirpath, d)) for d in dirnames)
        for p in (Path(dirpath) / f for f in filenames):
            if is_image_name(p) and p.is_file():
                found.append(p)
            elif others is not None and not is_junk(p):
                others.append(p)
    return sorted(found)


# (root, split) -> (folders walked, their stamps, (classes, files, labels)): what this process listed last.
# A worker process runs trial after trial on the same data: it lists the tree once, and after that only
# stats its folders. Adding, removing or renaming an entry changes its folder's mtime and ctime (ctime even
# when a tool then restores the mtime: tar, unzip, rsync -a, touch -r); another folder at the same path (a
# swapped link, a mount) has another inode. A file changed in place keeps the listing valid, and changes
# the image cache key (cache.image_key stats every file).
_LISTED = {}
RACY_NS = 2_000_000_000  # a folder changed this close before the listing began may have changed during it


def _stamps(folders):
    """(mtime in ns, size, ctime in ns, device, inode) of each folder (links followed); None when one is gone."""
    try:
        return [(st.st_mtime_ns, st.st_size, st.st_ctime_ns, st.st_dev, st.st_ino) for st in map(os.stat, folders)]
    except OSError:
        return None


def labeled_split(root, split):
    """(classes, files, labels) of ROOT/split/<class>/*; a class folder without images, or one class, is an error.

    Listed once per process while no folder of the split (nor the root) changes; see _LISTED.
    """
    slot = (os.path.abspath(root), split)
    if slot in _LISTED:
        folders, stamps, (classes, files, labels) = _LISTED[slot]
        if _stamps(folders) == stamps:
            return list(classes), list(files), list(labels)
        del _LISTED[slot]
    began = time.time_ns()
    walked = [str(root), str(Path(root) / split)]
    listing = _list_split(root, split, walked)
    stamps = _stamps(walked)
    # remember it only when no folder changed since shortly before the walk began (git's "racy" rule)
    if stamps is not None and all(stamp[0] < began - RACY_NS for stamp in stamps):
        _LISTED[slot] = (walked, stamps, listing)
    classes, files, labels = listing
    return list(classes), list(files), list(labels)


def _list_split(root, split, walked):
    folder = Path(root) / split
    tree = _split_folders(root)
    entries = sorted(folder.iterdir())
    classes = sorted(p.name for p in entries if p.is_dir() and not is_skipped_folder(p.name)
                     and not (p.is_symlink() and _skip_link(p, tree, set())))
    loose = [p.name for p in entries if p.is_file() and is_image_name(p)]
    if loose:
        log.warning("%s holds %d image(s) outside the class folders (e.g. %s): not used; move each into the "
                    "folder of its class", folder, len(loose), loose[0])
    if not classes:
        raise DataError(f"{folder} has no class folders; {LAYOUT}")
    if len(classes) == 1:
        raise DataError(f"{folder} has one class folder ({classes[0]}): nothing to classify; "
                        f"add a folder per class; {LAYOUT}")
    files, labels, empty, others = [], [], [], []
    for label, name in enumerate(classes):
        found = image_files(folder / name, tree, walked, others)
        if not found:
            empty.append(name)
        files += found
        labels += [label] * len(found)
    warn_not_images(folder, others)
    if empty:
        raise DataError(f"{folder}: class folder(s) with no images: {empty} "
                        f"(image extensions: {sorted(IMAGE_EXTENSIONS)}); remove them or add images")
    return classes, files, labels


def check_same_classes(train_classes, val_classes, root):
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        nfc = {unicodedata.normalize("NFC", name) for name in only_train}
        hint = ("; they differ only in how accents are encoded (Unicode NFC vs NFD, e.g. one split copied from "
                "macOS): rename them in one split" if nfc & {unicodedata.normalize("NFC", n) for n in only_val} else "")
        raise DataError(f"{root}: Train/ and Validation/ must have the same class folders; "
                        f"only in Train: {only_train}, only in Validation: {only_val}{hint}")


HOLDOUT_SEED = 0   # the held-out part of Validation is the same for every run of a data set


def holdout_mask(labels, fraction, classes=None):
    """Which validation images are held out: per class, round(fraction x its images) of them (at least 1), drawn
    with a fixed seed (stratified: every class keeps images on both sides). DataError naming every class that cannot
    keep that (fewer than 2 images, or so few that the fraction would leave none for the search: 0.9 of 2 images),
    with the largest fraction that fits: never silently a smaller one."""
    labels = np.asarray(labels)
    held = np.zeros(len(labels), dtype=bool)
    if not fraction:
        return held
    rows_of = {label: np.flatnonzero(labels == label) for label in np.unique(labels)}
    counts = {label: max(1, round(fraction * len(rows))) for label, rows in rows_of.items()}
    short = [label for label, rows in rows_of.items() if counts[label] > len(rows) - 1]
    if short:
        named = ", ".join(f"Validation/{classes[label] if classes is not None else label} has "
                          f"{len(rows_of[label])} image(s)" for label in short)
        smallest = min(len(rows) for rows in rows_of.values())
        fix = (f"use holdout at most {math.floor((smallest - 1) / smallest * 100) / 100:g}, holdout 0"
               if smallest >= 2 else "each class needs at least 2 validation images; use holdout 0")
        raise DataError(f"holdout {fraction}: {named}, too few to hold out {fraction:g} of each class and keep an "
                        f"image of it for the search; {fix}, or a larger validation split")
    rng = np.random.default_rng(HOLDOUT_SEED)
    for label, rows in rows_of.items():
        held[rng.permutation(rows)[:counts[label]]] = True
    return held


def warn_shared_files(train_files, val_files):
    """A warning when Validation files are Train files too (symbolic or hard links to one file): not held out."""
    def ids(files):
        return {(st.st_dev, st.st_ino): f for f, st in ((f, os.stat(f)) for f in files)}
    train = ids(train_files)
    shared = [(f, train[key]) for key, f in ids(val_files).items() if key in train]
    if shared:
        log.warning("%d Validation image(s) are Train images too (links to one file, e.g. %s and %s): validation "
                    "scores are not held out; link each image into one split only", len(shared), *shared[0])


def no_test_images(root):
    """Why ROOT has no submission: no Test/ folder, or a Test/ without image files."""
    folder = Path(root) / TEST
    if not folder.is_dir():
        return f"no {TEST}/ folder in {root}"
    return f"{folder} holds no image files (image extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})"


def check_metric(metric, classes, where):
    """val_top5 on 5 classes or fewer is 1.0 at every epoch (the true class is always among the 5 highest scores):
    it would rank every epoch and trial equal, so it is refused rather than warned about."""
    if metric == "val_top5" and len(classes) <= 5:
        raise ConfigError(f"metric val_top5 on {where}, which has {len(classes)} classes: the true class is always "
                          "among the 5 highest scores, so val_top5 is 1.0 at every epoch and ranks nothing; use "
                          "val_acc, val_loss or val_macro_f1 (val_top5 needs 6 classes or more)")


def _natural_key(path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.stem)] + [path.name]


def test_files(root):
    """Files of ROOT/Test in submission order: by the integer in their name (0.jpg, 1.jpg, ..., 10.jpg).

    Names with the same number (01.png, 1.png) follow by name, and names that are not plain integers are
    ordered naturally (img2 before img10); a warning says so. Their Id in submission.csv is the file name.
    Subfolders of Test/ are skipped with a warning. Returns [] when there is no Test/ folder.
    """
    folder = Path(root) / TEST
    if not folder.is_dir():
        return []
    entries = sorted(folder.iterdir())
    subfolders = [p.name for p in entries if p.is_dir() and not is_skipped_folder(p.name)]
    if subfolders:
        log.warning("Test/ holds files only: skipping its subfolder(s) %s and the files in them", subfolders[:5])
    files = [p for p in entries if p.is_file() and is_image_name(p)]
    warn_not_images(folder, [p for p in entries if not p.is_dir() and p not in files and not is_junk(p)])
    if all(p.stem.isdigit() for p in files):
        by_number = {}
        for p in files:
            by_number.setdefault(int(p.stem), []).append(p.name)
        same = [names for names in by_number.values() if len(names) > 1]
        if same:
            log.warning("Test/ has file names with the same number (e.g. %s); ordering them by number, then by name",
                        sorted(same[0]))
        return sorted(files, key=lambda p: (int(p.stem), p.name))
    odd = sorted(p.name for p in files if not p.stem.isdigit())
    log.warning("Test/ has %d file name(s) that are not integers (e.g. %s); ordering them naturally by name",
                len(odd), odd[:3])
    return sorted(files, key=_natural_key)


DEMO_IMAGE_SIZE = 32   # dogs.train's image_size on the demo unless one is given: its digits are 8x8 pixels


def demo_digits(cache_dir):
    """scikit-learn's 1,797 real handwritten digits (8x8, 10 classes) written once as an ImageFolder.

    Split 70/15/15 into Train/<digit>/, Validation/<digit>/ and a numbered Test/ whose answers are kept
    in test_labels.csv beside it; that file is written last, so its presence means the demo is complete.
    """
    root = Path(cache_dir) / "demo-digits"
    with cache_errors(cache_dir):
        build_once(root / "test_labels.csv", lambda: _write_demo(root))
    return root


def _write_demo(root):
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    n_train, n_val = int(0.7 * len(order)), int(0.15 * len(order))
    # every image under its final name (a rerun after a crash rewrites the same names), the answers last
    for i, idx in enumerate(order):
        pixels = (digits.images[idx] * (255 / 16)).astype(np.uint8)
        label = int(digits.target[idx])
        if i < n_train + n_val:
            split = TRAIN if i < n_train else VALIDATION
            path = root / split / str(label) / f"{idx}.png"
        else:
            path = root / TEST / f"{i - n_train - n_val}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(pixels).save(tmp)  # 2-D uint8: grey (L)
    test_idx = order[n_train + n_val:]
    lines = ["Id,Class"] + [f"{i}.png,{digits.target[idx]}" for i, idx in enumerate(test_idx)]
    with atomic_path(root / "test_labels.csv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
