"""Predictions: submission.csv (Id,Class) for Test/, a grid of validation images with their predictions, and
(for tune.best) a report: validation accuracy of the single model vs TTA vs an ensemble, per-class accuracy,
a confusion matrix and warnings.txt (whether the model learnt anything: dogs.baseline's two rules).

A predictor is one model or an ensemble of `members`, each (model, config): each decodes the images at its
own image_size and normalizes them its own way; their softmax outputs are averaged. With `tta`, each
member's output is the mean over the image and its horizontal mirror.
"""
import contextlib
import csv
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import baseline, cache, data, models
from .batches import Batches, image_preparer
from .device import amp_dtype, default_device
from .errors import CheckpointError
from .files import atomic_path, write_csv
from .splits import load_split


log = logging.getLogger("dogs")


@torch.no_grad()
def predict_probs(model, config, images, index, device, tta=False):
    """Softmax outputs (len(index), classes) for rows `index` of a CachedImages; with `tta` averaged with the mirror."""
    mean, std = models.normalization(config)
    batches = Batches(images.images, np.zeros(len(images.images)), index, 256, device,
                      image_preparer(mean, std, device, channels_last=config["channels_last"]), key=images.key)
    amp = amp_dtype(config, device)
    model.eval()
    out = []
    for x, _ in batches:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            probs = model(x).float().softmax(1)
            if tta:  # the horizontal mirror (width is the last axis of NCHW)
                probs = (probs + model(x.flip(3)).float().softmax(1)) / 2
        out.append(probs.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def predict_images(model, config, images, index, device, tta=False):
    """Predicted class index for rows `index` of a CachedImages."""
    probs = predict_probs(model, config, images, index, device, tta)
    return probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)


def ensemble_probs(members, files, device, tta=False):
    """(mean softmax (len(files), classes), readable mask) of the members [(model, config)] over `files`."""
    total, ok = None, None
    for model, config in members:
        images = cache.cached_images(files, config["image_size"], cache.cache_root(config["cache_dir"]))
        rows = np.flatnonzero(images.ok)
        probs = predict_probs(model, config, images, rows, device, tta)
        full = np.zeros((len(files), probs.shape[1] if len(rows) else 0), dtype=np.float32)
        full[rows] = probs
        total = full if total is None else total + full
        ok = images.ok.copy() if ok is None else ok & images.ok
    return total / len(members), ok


def write_submission(model, config, root, path, device, fallback_class=0, tta=False, others=()):
    """submission.csv with one row per Test/ file in numeric order; None when there is no Test/ folder.

    `others`: more (model, config) members averaged with this one. An unreadable Test file still gets a row
    (Kaggle wants one per file): the `fallback_class`, with a warning.
    """
    files = data.test_files(root)
    if not files:
        return None
    probs, ok = ensemble_probs([(model, config), *others], files, device, tta)
    predicted = np.full(len(files), fallback_class, dtype=np.int64)
    predicted[ok] = probs[ok].argmax(1)
    if not ok.all():
        log.warning("%d Test file(s) unreadable (%s); their rows in submission.csv say class %d, a guess: fix or "
                    "replace them", (~ok).sum(), ", ".join(f.name for f, good in zip(files, ok) if not good)[:300],
                    fallback_class)
    write_csv(pd.DataFrame({"Id": [f.name for f in files], "Class": predicted}), path)   # any name: one row
    return Path(path)


def label(name, width=40):
    """A class name as a picture shows it: whole up to `width` characters, else cut with an ellipsis."""
    return name if len(name) <= width else name[:width - 1] + "…"


@contextlib.contextmanager
def quiet_figure():
    """Without matplotlib's notes that do not change what a figure shows (a glyph the font lacks, e.g. an emoji in
    a class name; a layout too tight for a long name): not worth a warning line each."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Glyph .* missing from font")
        warnings.filterwarnings("ignore", "Tight layout not applied")
        yield


def save_grid(model, config, classes, root, path, device, count=16):
    """A PNG of `count` validation images titled 'Actual: X / Prediction: Y' (wrong ones in red)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    _, split = load_split(root, data.VALIDATION, config)
    rows = split.index[np.linspace(0, len(split.index) - 1, min(count, len(split.index))).astype(int)]
    predicted = predict_images(model, config, split.images, rows, device)
    side = int(np.ceil(np.sqrt(len(rows))))
    fig, axes = plt.subplots(side, side, figsize=(3 * side, 3.3 * side))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, row, guess in zip(np.ravel(axes), rows, predicted):
        actual = split.labels[row]
        ax.imshow(split.images.images[row])
        # a class name is text, never math: $, \\ and _ are shown as they are
        ax.set_title(f"Actual: {label(classes[actual])}\nPrediction: {label(classes[guess])}", fontsize=8,
                     parse_math=False, color="black" if guess == actual else "red")
    with quiet_figure(), atomic_path(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return Path(path)


def write_report(members, classes, root, folder, device, tta=False, log_fn=print, warnings_before=()):
    """report/: accuracy.csv (single vs TTA vs ensemble on Validation, printed too), per_class.csv,
    confusion.csv and confusion.png of the submitted predictor (the ensemble of all members, with TTA when asked),
    and warnings.txt: `warnings_before` (the Test rule's) and whether its val_acc is above always answering the
    largest class (dogs.baseline), each printed once; "none" when no rule warns."""
    val_classes, files, labels = data.labeled_split(root, data.VALIDATION)
    if list(val_classes) != list(classes):
        raise CheckpointError(f"{root}/{data.VALIDATION}: its classes are not those of the checkpoint")
    labels, folder = np.asarray(labels), Path(folder)
    variants = {"single": (members[:1], False)}
    if tta:
        variants["single + TTA"] = (members[:1], True)
    if len(members) > 1:
        variants[f"ensemble of {len(members)}"] = (members, False)
        if tta:
            variants[f"ensemble of {len(members)} + TTA"] = (members, True)
    rows, predicted = [], None
    for name, (chosen, flip) in variants.items():  # the last variant is the submitted one
        probs, ok = ensemble_probs(chosen, files, device, flip)
        predicted = np.where(ok, probs.argmax(1) if probs.size else -1, -1)
        rows.append({"predictor": name, "val_acc": float((predicted[ok] == labels[ok]).mean()), "images": int(ok.sum())})
        log_fn(f"  val_acc      {rows[-1]['val_acc']:.4f}  {name}")
    top = max(rows, key=lambda row: row["val_acc"])
    if top["val_acc"] > rows[-1]["val_acc"]:  # the submission is the last variant: say when another did better
        members_flag = f"--ensemble {len(members)}" if top["predictor"].startswith("ensemble") else "--ensemble 1"
        tta_flag = "--tta" if top["predictor"].endswith("TTA") else "without --tta"
        log_fn(f"  note         the submission ({rows[-1]['predictor']}) scores below {top['predictor']} on Validation "
               f"(mirroring can change what an image shows, e.g. digits or text; weaker members dilute an ensemble): "
               f"{members_flag} {tta_flag} submits that one")
    # the submitted predictor against always answering the largest class (by the interval of its val_acc)
    warned = [*warnings_before, baseline.below_majority(rows[-1]["val_acc"], rows[-1]["images"], list(labels),
                                                        list(classes))]
    warned = [line for line in warned if line]
    for line in warned:
        log_fn(f"  {line}")
    ok = predicted >= 0
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels[ok], predicted[ok]), 1)
    support = confusion.sum(1)
    per_class = pd.DataFrame({"class": classes, "images": support, "correct": np.diag(confusion),
                              "accuracy": np.diag(confusion) / np.maximum(support, 1)})
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in (("accuracy.csv", pd.DataFrame(rows)), ("per_class.csv", per_class)):
        with atomic_path(folder / name) as tmp:   # every name quoted: pandas leaves a carriage return in one bare
            table.to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC)
    with atomic_path(folder / "warnings.txt") as tmp:
        tmp.write_text("\n".join(warned or [f"none: {rows[-1]['predictor']} is above always answering the largest "
                                            f"class on Validation, and answers no one class for >= "
                                            f"{baseline.ONE_CLASS:.0%} of the Test photos"]) + "\n")
    save_confusion(confusion, classes, folder / "confusion.png", title=rows[-1]["predictor"])
    return folder


WRITES = ("submission.csv", "predictions.png")   # what submit() writes into its folder (and report/ with report=True)
MATRIX_CLASSES = 30   # above this many classes a matrix is unreadable: confusion.png draws the most-confused pairs
TOP_PAIRS = 20


def most_confused(confusion, classes, top=TOP_PAIRS):
    """[(true class, predicted class, count)] of the `top` largest off-diagonal counts (none of 0), largest first."""
    off = np.array(confusion, dtype=np.int64)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    return [(classes[i], classes[j], int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape))
            if off[i, j] > 0]


def save_confusion(confusion, classes, path, title=""):
    """The full matrix as confusion.csv (rows: true class, columns: predicted) and a picture of it: up to
    MATRIX_CLASSES classes the row-normalized matrix with the class names, above that the most-confused pairs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        pd.DataFrame(confusion, index=pd.Index(classes, name="true"), columns=list(classes)).to_csv(
            tmp, quoting=csv.QUOTE_NONNUMERIC)   # every name quoted, as per_class.csv
    n = len(classes)
    if n > MATRIX_CLASSES:
        pairs = most_confused(confusion, classes)
        fig, ax = plt.subplots(figsize=(10, 1.5 + 0.35 * max(len(pairs), 1)))
        names = [f"{label(true)}  ->  {label(predicted)}" for true, predicted, _ in pairs]
        ax.barh(range(len(pairs)), [count for *_, count in pairs], color="tab:blue")
        ax.set_yticks(range(len(pairs)), names, fontsize=9, parse_math=False)   # class names are text, not math
        ax.invert_yaxis()   # the most confused on top
        ax.set_xlabel("validation images (true class -> predicted class)")
        ax.set_title(f"The {len(pairs)} most-confused pairs of {n} classes ({title}; the full matrix: "
                     f"{path.with_suffix('.csv').name})", parse_math=False)
    else:
        side = 4 + 0.18 * n
        fig, ax = plt.subplots(figsize=(side, side))
        ax.imshow(confusion / np.maximum(confusion.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        font = max(3, min(10, 400 / n))
        names = [label(name) for name in classes]
        ax.set_xticks(range(n), names, rotation=90, fontsize=font, parse_math=False)   # class names are text, not math
        ax.set_yticks(range(n), names, fontsize=font, parse_math=False)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"Validation confusion matrix ({title}; rows sum to 1)")
    with quiet_figure(), atomic_path(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def submit(model, ckpt, out_dir, data_root=None, device=None, tta=False, others=(), report=False, log_fn=print):
    """Write submission.csv (when Test/ exists) and predictions.png into out_dir from a loaded checkpoint.

    `others`: more (model, ckpt) pairs whose softmax is averaged with this one; `report`: also out_dir/report/.
    """
    device = device or default_device()
    members = [(m.to(device), {**c["config"], "data": data_root if data_root is not None else c["config"]["data"]})
               for m, c in [(model, ckpt), *others]]
    for _, c in others:
        if list(c["classes"]) != list(ckpt["classes"]):
            raise CheckpointError(f"ensemble members have different classes ({len(c['classes'])} vs "
                                  f"{len(ckpt['classes'])}): they were trained on other data")
    (model, config), rest = members[0], members[1:]
    root, _ = data.resolve_root(config["data"], config["cache_dir"])
    # the data's classes are the checkpoint's, checked before anything is written (Class is an index into them)
    classes = list(ckpt["classes"])
    val_classes = data.labeled_split(root, data.VALIDATION)[0]
    if val_classes != classes:
        raise CheckpointError(f"{root}: its classes are not those of the checkpoint (only in the checkpoint: "
                              f"{sorted(set(classes) - set(val_classes))[:5]}, only in {data.VALIDATION}/: "
                              f"{sorted(set(val_classes) - set(classes))[:5]}): predict for the data it was trained on")
    numbered = [re.match(r"\d+", name) for name in classes]
    if all(numbered) and any(int(m.group()) != i for i, m in enumerate(numbered)):
        log.warning("the class folders are numbered, but Class in submission.csv is the index into their sorted "
                    "names, not that number: %s", ", ".join(f"{i} = {name!r}" for i, name in enumerate(classes[:3])))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    submission = write_submission(model, config, root, out_dir / "submission.csv", device, tta=tta, others=rest)
    grid = save_grid(model, config, ckpt["classes"], root, out_dir / "predictions.png", device)
    written = {"submission": submission, "grid": grid}
    # the submitted answers: one class for nearly every Test photo? (dogs.baseline; in report/warnings.txt too)
    answers = pd.read_csv(submission, dtype={"Id": str}).Class.to_numpy() if submission is not None else []
    test_warning = baseline.one_class(answers, classes)
    if report:
        written["report"] = write_report(members, ckpt["classes"], root, out_dir / "report", device, tta, log_fn,
                                         [test_warning] if test_warning else [])
    elif test_warning:
        log_fn(f"  {test_warning}")
    return written
