"""Predictions: submission.csv (Id,Class) for Test/, and a grid of validation images with their predictions."""
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import cache, data, models
from .batches import Batches, image_preparer
from .engine import amp_dtype, default_device, load_split
from .files import atomic_path

log = logging.getLogger("dogs")


@torch.no_grad()
def predict_images(model, config, images, index, device):
    """Predicted class index for rows `index` of a CachedImages."""
    mean, std = models.normalization(config)
    batches = Batches(images.images, np.zeros(len(images.images)), index, 256, device,
                      image_preparer(mean, std, device, channels_last=config["channels_last"]), key=images.key)
    amp = amp_dtype(config, device)
    model.eval()
    out = []
    for x, _ in batches:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out.append(model(x).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def write_submission(model, config, root, path, device, fallback_class=0):
    """submission.csv with one row per Test/ file in numeric order; None when there is no Test/ folder.

    An unreadable Test file still gets a row (Kaggle wants one per file): the `fallback_class`, with a warning.
    """
    files = data.test_files(root)
    if not files:
        return None
    images = cache.cached_images(files, config["image_size"], config["cache_dir"] or data.default_cache_dir())
    predicted = np.full(len(files), fallback_class, dtype=np.int64)
    ok = np.flatnonzero(images.ok)
    predicted[ok] = predict_images(model, config, images, ok, device)
    if len(ok) < len(files):
        log.warning("%d Test file(s) unreadable; predicted class %d for them", len(files) - len(ok), fallback_class)
    with atomic_path(path) as tmp:
        pd.DataFrame({"Id": [f.name for f in files], "Class": predicted}).to_csv(tmp, index=False)
    return Path(path)


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
        ax.set_title(f"Actual: {classes[actual]}\nPrediction: {classes[guess]}", fontsize=8,
                     color="black" if guess == actual else "red")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return Path(path)


def submit(model, ckpt, out_dir, data_root=None, device=None):
    """Write submission.csv (when Test/ exists) and predictions.png into out_dir from a loaded checkpoint."""
    config = {**ckpt["config"], "data": data_root if data_root is not None else ckpt["config"]["data"]}
    device = device or default_device()
    model = model.to(device)
    root, _ = data.resolve_root(config["data"], config["cache_dir"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    submission = write_submission(model, config, root, out_dir / "submission.csv", device)
    grid = save_grid(model, config, ckpt["classes"], root, out_dir / "predictions.png", device)
    return {"submission": submission, "grid": grid}
