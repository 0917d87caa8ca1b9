"""Predict photos by class name: a loaded checkpoint (or an ensemble of them) maps images to their top-k classes.

    predictor = Predictor.load("runs/x/best/best.pt")            # or Predictor([(model, ckpt), ...], tta=True)
    predictor.top_k(predictor.probs([predictor.decode("dog.jpg")]), k=5)   # [[(name, index, prob), ...]]

Images are decoded by dogs.decode.load_rgb, the function training decoded them with (EXIF, 16-bit, transparency,
the same resize), at each member's image_size, and go through dogs.submission.predict_probs, the submission's own
path (the same normalization, precision and mirror TTA). No data folder is needed: the classes are the checkpoint's.
Used by tune.best --predict and by tune.serve (a request's bytes); ExportedPredictor is the same for a folder
that tune.best --export wrote (its ONNX file in ONNX Runtime).
"""
import glob
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from . import checkpoint, data
from .cache import CachedImages, cpu_count
from .decode import load_rgb
from .errors import CheckpointError, DataError, UserError
from .files import is_special


BATCH = 256   # images decoded and predicted at a time: memory stays flat for any number of photos


class Predictor:
    """One model or an ensemble: members [(model, ckpt)] with the same classes; softmax averaged over them."""

    def __init__(self, members, tta=False, device=None):
        from .device import default_device

        if not members:
            raise ValueError("a Predictor needs at least one (model, ckpt)")
        self.classes = list(members[0][1]["classes"])
        for _, ckpt in members[1:]:
            if list(ckpt["classes"]) != self.classes:
                raise CheckpointError(f"ensemble members have different classes ({len(ckpt['classes'])} vs "
                                      f"{len(self.classes)}): they were trained on other data")
        self.device = device or default_device()
        self.members = [(model.to(self.device).eval(), ckpt) for model, ckpt in members]
        self.tta = tta
        self.sizes = sorted({ckpt["config"]["image_size"] for _, ckpt in members})

    @classmethod
    def load(cls, paths, tta=False, device=None):
        """A Predictor from checkpoint files (checkpoint.pt, dogs.train's best.pt / last.pt, or their folders)."""
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        return cls([checkpoint.load(p) for p in paths], tta=tta, device=device)

    def decode(self, source):
        """{image_size: (size, size, 3) uint8} of one image (a path, bytes or a file object), as training decoded it.

        Raises on an unreadable image (the caller turns that into a row or a 400)."""
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(source)
        decoded = {}
        for size in self.sizes:
            if hasattr(source, "seek"):
                source.seek(0)
            decoded[size] = load_rgb(source, size)
        return decoded

    def probs(self, decoded):
        """Softmax (len(decoded), classes) of a list of decode() results: each member's, averaged (as a submission)."""
        from .submission import predict_probs

        total = None
        for model, ckpt in self.members:
            size = ckpt["config"]["image_size"]
            # key None: a batch is never kept on the device (its key would name other images next time)
            images = CachedImages(None, np.stack([d[size] for d in decoded]) if decoded
                                  else np.zeros((0, size, size, 3), np.uint8), [])
            probs = predict_probs(model, ckpt["config"], images, np.arange(len(decoded)), self.device, self.tta)
            total = probs if total is None else total + probs
        return total / len(self.members) if len(decoded) else np.zeros((0, len(self.classes)), np.float32)

    def top_k(self, probs, k=5):
        """[[(class name, class index, probability), ...] per row]: the k most probable classes, best first."""
        k = min(k, len(self.classes))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.classes[i], int(i), float(row[i])) for i in top] for row, top in zip(probs, order)]

    def predict(self, sources, k=5, workers=None, progress=None):
        """[(top-k list, None) or (None, reason)] for each source (path, bytes, file object), in order, in batches.

        An unreadable image is (None, "<ErrorType>: message"), never an exception. `progress(n)` is called after
        each batch with the number of sources it held."""
        results = []
        with ThreadPoolExecutor(max_workers=workers or cpu_count()) as pool:  # Pillow releases the GIL
            for start in range(0, len(sources), BATCH):
                chunk = sources[start:start + BATCH]
                decoded = list(pool.map(self._try_decode, chunk))
                good = [d for d in decoded if not isinstance(d, str)]
                tops = iter(self.top_k(self.probs(good), k))
                results += [(None, d) if isinstance(d, str) else (next(tops), None) for d in decoded]
                if progress is not None:
                    progress(len(chunk))
        return results

    def _try_decode(self, source):
        try:
            return self.decode(source)
        except Exception as err:  # corrupt, truncated, not an image, gone: the reason, for its row
            return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"


class ExportedPredictor(Predictor):
    """A Predictor of a folder tune.best --export wrote: its model.onnx in ONNX Runtime, its card's classes and size
    (decoded by load_rgb, as preprocess.py does). No checkpoint and no torch model needed."""

    def __init__(self, folder):
        import json

        import onnxruntime

        folder = Path(folder)
        try:
            card = json.loads((folder / "model_card.json").read_text())
            self.classes, self.sizes = list(card["classes"]), [int(card["input"]["size"])]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{folder} is not a folder tune.best --export wrote (its model_card.json: "
                            f"{type(err).__name__}: {err})") from None
        self.members, self.tta = [], False
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])

    def probs(self, decoded):
        if not decoded:
            return np.zeros((0, len(self.classes)), np.float32)
        return self.session.run(["probabilities"], {"image": np.stack([d[self.sizes[0]] for d in decoded])})[0]


def photo_files(paths):
    """(files, missing): the images `paths` name, in order, each once.

    A file is taken as given (its name need not look like an image); a folder gives its images at any depth, as the
    data's folders do (dogs.data.image_files: image extensions, hidden and system folders skipped); a path that does
    not exist is read as a glob (`**` recursive), whose folders are walked and whose files must have image names.
    `missing`: the paths that named nothing."""
    files, missing, seen = [], [], set()

    def add(path):
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            files.append(Path(path))

    for given in map(str, paths):
        if os.path.isfile(given):
            add(given)
            continue
        if is_special(given):   # opening a FIFO waits for a writer, /dev/zero never ends: refused, as in folders
            raise DataError(f"--predict {given}: it is {data.what_it_is(given)}, not an image file or a folder: "
                            "name photos, folders of photos or globs")
        matches = [given] if os.path.isdir(given) else sorted(glob.glob(os.path.expanduser(given), recursive=True))
        if not matches:
            missing.append(given)
        specials = []
        for match in matches:
            if os.path.isdir(match):
                others = []
                for f in data.image_files(match, [os.path.realpath(match)], others=others):
                    add(f)
                data.warn_not_images(match, others)
            elif data.is_image_name(Path(match)) and is_special(match):
                specials.append(Path(match))   # a glob's FIFO named x.jpg: skipped with a warning, as in a folder
            elif data.is_image_name(Path(match)):
                add(match)
        data.warn_not_images(given, specials)
    return files, missing


def check_top_k(k, classes):
    """`k` checked (>= 1) and capped by the number of classes; (k, note or None)."""
    if k < 1:
        raise UserError(f"--top-k {k}: the number of classes to show per photo must be >= 1")
    if k > len(classes):
        return len(classes), f"--top-k {k}: the model knows {len(classes)} classes; showing all {len(classes)}"
    return k, None


def predictions_frame(files, results, k):
    """predictions.csv as a table: file, class, class_index, probability, then top1..topk names and probabilities,
    and error (the reason an image could not be read; its other columns are empty)."""
    rows = []
    for f, (top, error) in zip(files, results):
        row = {"file": str(f), "class": None, "class_index": None, "probability": None}
        if top:
            row.update({"class": top[0][0], "class_index": top[0][1], "probability": top[0][2]})
        for rank in range(k):
            row[f"top{rank + 1}"] = top[rank][0] if top else None
            row[f"top{rank + 1}_prob"] = top[rank][2] if top else None
        row["error"] = error
        rows.append(row)
    table = pd.DataFrame(rows, columns=["file", "class", "class_index", "probability",
                                        *[f"top{r + 1}{s}" for r in range(k) for s in ("", "_prob")], "error"])
    return table.astype({"class_index": "Int64"})


def format_table(table, k, limit=50):
    """The console lines of a predictions table (its first `limit` rows): file, each top-k class and probability."""
    width = min(max([len(f) for f in table.file[:limit]] + [4]), 60)
    lines = [f"{'file':<{width}}  top-{k}"]
    for row in table.head(limit).to_dict("records"):
        name = row["file"] if len(row["file"]) <= width else "..." + row["file"][-(width - 3):]
        shown = ("unreadable: " + row["error"] if isinstance(row["error"], str) else
                 "  ".join(f"{row[f'top{r + 1}']} {row[f'top{r + 1}_prob']:.3f}" for r in range(k)))
        lines.append(f"{name:<{width}}  {shown}")
    if len(table) > limit:
        lines.append(f"... and {len(table) - limit} more (all of them in predictions.csv)")
    return lines
