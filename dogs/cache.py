"""Decode once: every image of a split, RGB and resized, in one memory-mapped uint8 array (N, H, W, 3).

The array file is keyed by the file list (paths, sizes, mtimes) and the resolution, so a changed data set
is rebuilt and an unchanged one never is. All trials on a node map the same file, so one copy lives in
the page cache. A file lock makes trials that start together build it once. Corrupt files keep their
slot (all zeros) and are listed in the metadata; `CachedImages.ok` masks them out.
"""
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from filelock import FileLock

from .data import load_rgb

log = logging.getLogger("dogs")
VERSION = 1  # bump when the decode (load_rgb) changes


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cache_key(files, size):
    h = hashlib.sha256(f"v{VERSION} size={size}\n".encode())
    for path in files:
        st = os.stat(path)
        h.update(f"{os.path.abspath(path)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


class CachedImages:
    """Decoded images of one file list: `.images` (N, H, W, 3) uint8, `.ok` bool mask, `.bad` [[row, file, error]]."""

    def __init__(self, key, images, bad, build_seconds=0.0):
        self.key, self.images, self.bad, self.build_seconds = key, images, bad, build_seconds
        self.ok = np.ones(len(images), dtype=bool)
        self.ok[[row for row, _, _ in bad]] = False

    @classmethod
    def open(cls, path, meta):
        return cls(meta["key"], np.load(path, mmap_mode="r"), meta["bad"], meta["build_seconds"])


def cached_images(files, size, cache_dir, workers=None):
    """Open the decode cache for `files` at `size` px, building it first if needed (once per node)."""
    key = cache_key(files, size)
    folder = Path(cache_dir) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if not meta_path.exists():
        with FileLock(str(folder / f"{key}.lock")):
            if not meta_path.exists():  # another process may have built it while we waited
                _build(files, size, path, meta_path, key, workers or cpu_count())
    cache = CachedImages.open(path, json.loads(meta_path.read_text()))
    if cache.bad:
        log.warning("skipped %d unreadable image(s): %s", len(cache.bad),
                    "; ".join(f"{f} ({e})" for _, f, e in cache.bad[:10]) + (" ..." if len(cache.bad) > 10 else ""))
    return cache


def _build(files, size, path, meta_path, key, workers):
    # decode in threads: Pillow releases the GIL while it decodes and resizes
    start = time.perf_counter()
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
    bad = []

    def decode(i):
        try:
            out[i] = load_rgb(files[i], size)
        except Exception as e:  # corrupt, truncated or not an image at all: skip it, say which and why
            bad.append([i, str(files[i]), f"{type(e).__name__}: {e}"])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode, range(len(files))))
    out.flush()  # every row is on disk before the file gets its final name
    os.replace(tmp, path)
    seconds = time.perf_counter() - start
    meta = {"key": key, "size": size, "count": len(files), "bad": sorted(bad), "build_seconds": seconds}
    meta_tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
    meta_tmp.write_text(json.dumps(meta))
    os.replace(meta_tmp, meta_path)  # the metadata lands last: its presence means the array is complete
    log.info("decoded %d images at %dpx in %.1fs with %d threads -> %s", len(files), size, seconds, workers, path)
