"""Frozen-feature cache: the frozen prefix's output, computed once per node and reused by every trial.

With augmentation off, a frozen prefix (eval mode, no gradients) maps each image to the same tensor in
every epoch of every trial. We compute it once, store it as a memory-mapped array and trials then train
only the tail. The key hashes everything the array's bytes depend on: the decoded images (their cache
key), the normalization, the prefix's architecture and weights (which cover backbone, weights file, cut
point and, for random weights, the seed), how images become the prefix's input (PREPARE), the autocast and
storage dtypes, the memory format, the device and torch's and torchvision's versions (the modules' forward
code). Any change misses. An entry is opened only when its metadata and array agree with its key (open_entry).
"""
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from . import progress_bars as bars
from .batches import Batches, image_preparer
from .cache import cache_errors, new_array, open_entry
from .files import atomic_path, build_once

log = logging.getLogger("dogs")
BATCH = 256  # images per forward pass of the prefix while building
# How batches.image_preparer turns cached uint8 images into the prefix's input; change it, change this
PREPARE = "uint8 NHWC -> float32 NCHW, (x - 255 mean) / (255 std)"


def prefix_hash(frozen):
    h = hashlib.sha256()
    for name, t in frozen.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(repr(frozen).encode())  # the architecture too: two cut points never share a key
    return h.hexdigest()[:24]


def storage_dtype(amp):
    return np.float16 if amp is not None else np.float32


def feature_key(image_key, frozen, mean, std, amp, device, channels_last, prefix=None):
    """Hash of everything the features of `frozen` over the images of `image_key` depend on.

    `prefix`: prefix_hash(frozen) when the caller has it already (a run hashes its prefix once for both splits).
    """
    described = {
        "images": image_key, "prefix": prefix or prefix_hash(frozen), "mean": list(mean), "std": list(std),
        "autocast": str(amp), "store": np.dtype(storage_dtype(amp)).name, "channels_last": bool(channels_last),
        "device": device.type, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "batch": BATCH, "prepare": PREPARE, "torch": torch.__version__, "torchvision": torchvision.__version__,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]


def frozen_features(model, images, mean, std, device, amp, channels_last, cache_dir, prefix=None):
    """(N, ...) array of `model.frozen` applied to every image of `images` (a CachedImages), cached on disk.

    The prefix runs in channels_last memory format when `channels_last` (converted here, when it must run).
    """
    key = feature_key(images.key, model.frozen, mean, std, amp, device, channels_last, prefix)
    folder = Path(cache_dir) / "features"
    path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"

    def build():
        if channels_last:
            model.frozen.to(memory_format=torch.channels_last)
        _build(model, images, image_preparer(mean, std, device), device, amp,
               path, meta_path, key)

    # the metadata lands last: its presence means the array is complete
    with cache_errors(cache_dir):
        build_once(meta_path, build)
    expect = {"key": key, "images": images.key, "dtype": np.dtype(storage_dtype(amp)).name}
    return open_entry(path, meta_path, expect, len(images.images))[0], key


@torch.no_grad()
def _build(model, images, prepare, device, amp, path, meta_path, key):
    # one eval-mode pass of the frozen prefix over every image, written straight into the array file
    start = time.perf_counter()
    model.frozen.eval()
    store = storage_dtype(amp)
    batches = Batches(images.images, np.zeros(len(images.images)), np.arange(len(images.images)), BATCH,
                      device, prepare, key=images.key)
    out, row = None, 0
    progress = bars.bar(len(images.images), f"frozen features of {len(images.images)} images (once)", "img")
    with atomic_path(path) as tmp:
        for x, _ in batches:
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                f = model.frozen(x).float().cpu().numpy()
            if out is None:
                out = new_array(tmp, (len(images.images), *f.shape[1:]), store)
            out[row:row + len(f)] = f
            row += len(f)
            progress.update(len(f))
        out.flush()
    progress.close()
    seconds = time.perf_counter() - start
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps({"key": key, "images": images.key, "seconds": seconds, "dtype": np.dtype(store).name,
                                   "shape": list(out.shape)}))
    log.info("frozen features of %d images computed in %.1fs -> %s", row, seconds, path)
