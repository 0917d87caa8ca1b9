"""Frozen-feature cache: the frozen prefix's output, computed once per node and reused by every trial.

With augmentation off, a frozen prefix (eval mode, no gradients) maps each image to the same tensor in
every epoch of every trial. We compute it once, store it as a memory-mapped array keyed by the image
cache and a hash of the prefix's weights (which covers backbone, weights file and cut point) and dtype,
and trials then train only the tail. Frozen-prefix hashing makes the key exact: any weight change misses.
"""
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from .batches import Batches

log = logging.getLogger("dogs")


def prefix_hash(frozen):
    h = hashlib.sha256()
    for name, t in frozen.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(repr(frozen).encode())  # the architecture too: two cut points never share a key
    return h.hexdigest()[:24]


def frozen_features(model, images, prepare, device, amp_dtype, cache_dir, batch_size=256):
    """(N, ...) array of `model.frozen` applied to every image of `images` (a CachedImages), cached on disk."""
    store = np.float16 if amp_dtype is not None else np.float32
    key = hashlib.sha256(f"{images.key} {prefix_hash(model.frozen)} {np.dtype(store).name}".encode()).hexdigest()[:24]
    folder = Path(cache_dir) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if not meta_path.exists():
        with FileLock(str(folder / f"{key}.lock")):
            if not meta_path.exists():
                _build(model, images, prepare, device, amp_dtype, store, path, meta_path, batch_size)
    return np.load(path, mmap_mode="r"), key


@torch.no_grad()
def _build(model, images, prepare, device, amp_dtype, store, path, meta_path, batch_size):
    # one eval-mode pass of the frozen prefix over every image, written straight into the array file
    start = time.perf_counter()
    model.frozen.eval()
    batches = Batches(images.images, np.zeros(len(images.images)), np.arange(len(images.images)), batch_size,
                      device, prepare, key=images.key)
    out, row = None, 0
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    for x, _ in batches:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            f = model.frozen(x).float().cpu().numpy()
        if out is None:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=store, shape=(len(images.images), *f.shape[1:]))
        out[row:row + len(f)] = f
        row += len(f)
    out.flush()
    os.replace(tmp, path)
    seconds = time.perf_counter() - start
    meta_tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
    meta_tmp.write_text(json.dumps({"images": images.key, "seconds": seconds, "dtype": np.dtype(store).name}))
    os.replace(meta_tmp, meta_path)
    log.info("frozen features of %d images computed in %.1fs -> %s", row, seconds, path)
