"""Decode once: every image of a split, RGB and resized, in one memory-mapped uint8 array (N, H, W, 3).

The array file is keyed by everything its bytes depend on: the file list (paths, sizes, mtimes, inodes, ctimes,
in order), the resolution, and how a file is decoded (decode.DECODE, Pillow's version and those of the codec
libraries it decodes with). A changed data set or decode is rebuilt; an unchanged one never is. All trials on a
node map the same file, so one copy lives in the page cache, and a file lock makes trials that start together
build it once. Corrupt files keep their slot (all zeros) and are listed in the metadata; `CachedImages.ok` masks
them out. An entry is opened only when its metadata and array agree with its key (open_entry), never with pickle.
"""
import contextlib
import errno
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import PIL.features

from . import progress_bars as bars
from .decode import DECODE, load_rgb
from .errors import CacheError
from .files import atomic_path, build_once

log = logging.getLogger("dogs")


def cache_root(cache_dir=None):
    """The cache folder: config cache_dir when set, else $DOGS_CACHE, else ~/.cache/dogs-tune."""
    return Path(cache_dir or os.environ.get("DOGS_CACHE") or Path.home() / ".cache" / "dogs-tune")


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# Pillow decodes with these libraries; one Pillow version can be built against others (a wheel, conda, a distro)
CODECS = ("jpg", "libjpeg_turbo", "zlib", "libtiff", "webp", "avif", "jpg_2000")


def image_key(files, size):
    """Hash of DECODE, Pillow's and its codecs' versions, the size and each file (path, bytes, mtime, inode, ctime)
    in order.

    The inode and ctime catch a file rewritten with its size and mtime kept (`exiftool -P` setting the orientation,
    `cp -p`, `rsync -a`): no tool can set ctime, and every write or replacement changes it (so does chmod: a rebuild).
    """
    codecs = {name: PIL.features.version(name) for name in CODECS}
    decode = json.dumps({"decode": DECODE, "pillow": PIL.__version__, "codecs": codecs, "size": size}, sort_keys=True)
    h = hashlib.sha256(decode.encode() + b"\n")
    for path in files:
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        h.update(f"{os.path.abspath(path)}\t{stamp}\n".encode())
    return h.hexdigest()[:24]


def image_cache_key(config, files):
    """The decoded-image cache key a run of `config` uses for `files` (no decoding)."""
    return image_key(files, config["image_size"])


@contextlib.contextmanager
def cache_errors(cache_dir):
    """An OSError while writing the cache (read-only folder, disk full) -> one CacheError naming the folder."""
    try:
        yield
    except CacheError:
        raise
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise CacheError(f"cannot write the cache folder {cache_dir}: {e.strerror or e}{where}; set DOGS_CACHE "
                         f"(or the cache_dir key) to a writable folder with free space") from e


def new_array(path, shape, dtype):
    """A memory-mapped .npy file with its blocks reserved now: a full disk fails here, not as a crash mid-write."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise  # else the file system cannot reserve blocks: write as before
    return out


def open_entry(path, meta_path, expect, rows):
    """(array, metadata) of a built cache entry: the .npy memory-mapped (never unpickled), checked first.

    The metadata must parse and hold `expect`'s values (its key, ...), the array must have the metadata's shape and
    dtype and `rows` rows. Anything else (a truncated, zero-filled or planted file, one copied under another key's
    name) is one CacheError naming both files: a run never reads bytes its key does not vouch for.
    """
    try:
        meta = json.loads(Path(meta_path).read_text())
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        why = [f"{name} is {meta.get(name)!r}, not {value!r}" for name, value in expect.items()
               if meta.get(name) != value]
        if [array.dtype.name, list(array.shape)] != [meta.get("dtype"), meta.get("shape")] or len(array) != rows:
            why.append(f"the array is {array.dtype.name} {list(array.shape)}: the metadata says {meta.get('dtype')} "
                       f"{meta.get('shape')}, for {rows} rows")
    except (OSError, EOFError, ValueError, TypeError, AttributeError) as e:   # unreadable, not .npy, pickled, not JSON
        why = ["not a plain .npy array (pickled data is refused, never loaded)" if "pickle" in str(e) else
               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"]
    if why:
        raise CacheError(f"damaged cache entry {path} ({'; '.join(why)}): delete {Path(path).name} and "
                         f"{Path(meta_path).name} from {Path(path).parent} (the next run rebuilds them); a cache "
                         f"folder must hold only what dogs-tune wrote there")
    return array, meta


class CachedImages:
    """Decoded images of one file list: `.images` (N, H, W, 3) uint8, `.ok` bool mask, `.bad` [[row, file, error]]."""

    def __init__(self, key, images, bad, build_seconds=0.0):
        self.key, self.images, self.bad, self.build_seconds = key, images, bad, build_seconds
        self.ok = np.ones(len(images), dtype=bool)
        self.ok[[row for row, _, _ in bad]] = False

    @classmethod
    def open(cls, path, meta_path, key, files, size):
        """The entry of `key` for `files` at `size` px, checked (open_entry); its unreadable files must be `files`'."""
        shape = [len(files), size, size, 3]
        images, meta = open_entry(path, meta_path, {"key": key, "shape": shape, "dtype": "uint8"}, len(files))
        bad = meta.get("bad")
        if not isinstance(bad, list) or not all(
                isinstance(b, list) and len(b) == 3 and type(b[0]) is int and 0 <= b[0] < len(files)
                and b[1] == str(files[b[0]]) for b in bad):
            raise CacheError(f"damaged cache entry {path}: its metadata lists unreadable files that are not rows of "
                             f"its file list: delete {Path(path).name} and {Path(meta_path).name} from "
                             f"{Path(path).parent} (the next run rebuilds them)")
        return cls(key, images, bad, meta.get("build_seconds", 0.0))


_OPEN = {}  # (cache folder, key) -> CachedImages: a worker process maps each array once, whatever its trials


def cached_images(files, size, cache_dir, workers=None):
    """Open the decode cache for `files` at `size` px, building it first if needed (once per node)."""
    key = image_key(files, size)
    slot = (os.path.abspath(cache_dir), key)
    if slot in _OPEN:
        return _OPEN[slot]
    folder = Path(cache_dir) / "images"
    path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    # the metadata lands last: its presence means the array is complete
    with cache_errors(cache_dir):
        build_once(meta_path, lambda: _build(files, size, path, meta_path, key, workers or cpu_count()))
    cache = CachedImages.open(path, meta_path, key, files, size)
    if cache.bad:
        log.warning("skipped %d unreadable image(s): %s", len(cache.bad),
                    "; ".join(f"{f} ({e})" for _, f, e in cache.bad[:10]) + (" ..." if len(cache.bad) > 10 else ""))
    while len(_OPEN) >= 8:   # the last few data sets and sizes
        _OPEN.pop(next(iter(_OPEN)))
    _OPEN[slot] = cache
    return cache


def _build(files, size, path, meta_path, key, workers):
    # decode in threads: Pillow releases the GIL while it decodes and resizes
    start = time.perf_counter()
    bad = []
    with atomic_path(path) as tmp:
        out = new_array(tmp, (len(files), size, size, 3), np.uint8)

        def decode(i):
            try:
                out[i] = load_rgb(files[i], size)
            except Exception as e:  # corrupt, truncated or not an image at all: skip it, say which and why
                bad.append([i, str(files[i]), f"{type(e).__name__}: {e}"])

        progress = bars.bar(len(files), f"decoding {len(files)} images at {size}px (once)", "img")
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(decode, range(len(files))):
                progress.update(1)
        progress.close()
        out.flush()  # every row is on disk before the file gets its final name
    seconds = time.perf_counter() - start
    meta = {"key": key, "size": size, "count": len(files), "shape": [len(files), size, size, 3], "dtype": "uint8",
            "bad": sorted(bad), "build_seconds": seconds}
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta))
    log.info("decoded %d images at %dpx in %.1fs with %d threads -> %s", len(files), size, seconds, workers, path)
