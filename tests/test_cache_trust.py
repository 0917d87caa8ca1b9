"""Caches and concurrent use that never hand a run wrong bytes: damaged or planted cache entries, writers of one
path, a killed builder's lock, a listing changed behind restored folder times, keys that follow library versions,
and checkpoints whose frozen prefix identity is not ours."""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import PIL.features
import pytest
import torch
import torchvision
from filelock import FileLock, Timeout
from torch import nn

from conftest import draw, make_imagefolder
from dogs import cache, checkpoint, data, features
from dogs.errors import CacheError, CheckpointError
from dogs.files import atomic_path, build_once

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = make_imagefolder(tmp_path_factory.mktemp("trust") / "data", n_train=3, n_val=1, n_test=0, awkward=False)
    return data.labeled_split(root, data.TRAIN)[1]


def entry(folder, key):
    return folder / f"{key}.npy", folder / f"{key}.json"


def edit_meta(meta_path, **changes):
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **changes}))


# each: what a crash, a full disk, a copy or a planted file leaves under the right key's name
DAMAGE = {
    "array_of_another_size": lambda npy, meta, files: np.save(npy, np.zeros((len(files), 32, 32, 3), np.uint8)),
    "array_with_fewer_rows": lambda npy, meta, files: np.save(npy, np.zeros((2, 16, 16, 3), np.uint8)),
    "array_of_floats": lambda npy, meta, files: np.save(npy, np.zeros((len(files), 16, 16, 3), np.float32)),
    "truncated_array": lambda npy, meta, files: npy.write_bytes(npy.read_bytes()[:1000]),
    "zero_filled_array": lambda npy, meta, files: npy.write_bytes(bytes(npy.stat().st_size)),
    "pickled_array": lambda npy, meta, files: np.save(npy, np.array([{"code": 1}], dtype=object), allow_pickle=True),
    "array_gone": lambda npy, meta, files: npy.unlink(),
    "empty_metadata": lambda npy, meta, files: meta.write_text(""),
    "metadata_of_another_key": lambda npy, meta, files: edit_meta(meta, key="0" * 24),
    "metadata_listing_a_row_out_of_the_file_list": lambda npy, meta, files: edit_meta(meta, bad=[[-1, "x.jpg", "e"]]),
    "metadata_listing_another_file": lambda npy, meta, files: edit_meta(meta, bad=[[0, "other.jpg", "e"]]),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_or_planted_image_cache_entry_is_one_cache_error_never_used(files, tmp_path, damage):
    built = cache.cached_images(files, 16, tmp_path)
    npy, meta = entry(tmp_path / "images", built.key)
    DAMAGE[damage](npy, meta, files)
    cache._OPEN.clear()   # a new worker process
    with pytest.raises(CacheError, match="damaged cache entry .*delete") as err:
        cache.cached_images(files, 16, tmp_path)
    assert "\n" not in str(err.value) and "allow_pickle" not in str(err.value)


class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.mark.parametrize("damage", ["rows", "dtype", "metadata_of_other_images"])
def test_a_damaged_or_planted_feature_cache_entry_is_one_cache_error_never_used(files, tmp_path, damage):
    images = cache.cached_images(files, 16, tmp_path)
    model, half = Frozen(), (0.5, 0.5, 0.5)
    array, key = features.frozen_features(model, images, half, half, CPU, None, False, tmp_path)
    npy, meta = entry(tmp_path / "features", key)
    if damage == "rows":
        np.save(npy, np.asarray(array)[:2])
        edit_meta(meta, shape=[2, 4])
    elif damage == "dtype":
        np.save(npy, np.asarray(array).astype(np.float16))
        edit_meta(meta, dtype="float16")
    else:
        edit_meta(meta, images="0" * 24)
    with pytest.raises(CacheError, match="damaged cache entry .*delete") as err:
        features.frozen_features(model, images, half, half, CPU, None, False, tmp_path)
    assert "\n" not in str(err.value)


def test_two_writers_of_one_path_never_share_a_temp_file(tmp_path):
    # threads of one process, or two machines whose pids are equal writing a shared folder over NFS
    target = tmp_path / "x.npy"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"   # the last rename wins, whole


def test_a_lock_left_by_a_killed_builder_never_blocks_the_next_build(tmp_path):
    done = tmp_path / "done.json"
    holder = subprocess.Popen([sys.executable, "-c", "import time; from filelock import FileLock; "
                               f"lock = FileLock({str(done) + '.lock'!r}); lock.acquire(); print('locked', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(Timeout):   # it holds the lock
            FileLock(str(done) + ".lock").acquire(timeout=0)
        holder.kill()   # SIGKILL mid-build: no cleanup ran, the .lock file stays
        holder.wait()
        assert done.with_name("done.json.lock").exists()
        built = []
        worker = threading.Thread(target=lambda: built.append(build_once(done, lambda: done.write_text("{}"))))
        worker.start()
        worker.join(timeout=60)   # a hang guard only
        assert built == [True] and done.exists()
    finally:
        holder.kill()


def test_a_listing_whose_folder_changed_behind_a_restored_mtime_is_listed_again(tmp_path):
    # tar, unzip, rsync -a and touch -r set a folder's mtime back after changing its entries; the ctime moves on
    root = make_imagefolder(tmp_path / "data", n_train=2, n_val=1, n_test=0, awkward=False)
    folder = root / "Train" / "square"
    past = time.time() - 60
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, (past, past))
    first = data.labeled_split(root, data.TRAIN)[1]
    stamp = folder.stat()
    draw("square", np.random.default_rng(3)).save(folder / "new.png")
    os.utime(folder, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert folder.stat().st_mtime_ns == stamp.st_mtime_ns and folder.stat().st_size == stamp.st_size
    again = data.labeled_split(root, data.TRAIN)[1]
    assert folder / "new.png" in again and len(again) == len(first) + 1


def test_cache_keys_follow_the_codec_and_torchvision_versions(files, monkeypatch):
    image_key = cache.image_key(files, 16)
    frozen = nn.Sequential(nn.Conv2d(3, 4, 3))
    feature_key = features.feature_key("images", frozen, (0.5,) * 3, (0.5,) * 3, None, CPU, False)
    version = PIL.features.version
    monkeypatch.setattr(PIL.features, "version", lambda name: "0.1" if name == "jpg" else version(name))
    assert cache.image_key(files, 16) != image_key   # another libjpeg decodes other pixels from one file
    monkeypatch.setattr(torchvision, "__version__", "0.0.1")
    assert features.feature_key("images", frozen, (0.5,) * 3, (0.5,) * 3, None, CPU, False) != feature_key


def test_a_checkpoint_whose_frozen_prefix_identity_is_not_ours_is_one_line(tmp_path):
    state = {key: {} for key in checkpoint.KEYS}
    for frozen in ({"model": "resnet18"}, "resnet18", {"model": "resnet18", "weights": "DEFAULT", "hash": 7}):
        path = checkpoint.save({**state, "frozen": frozen}, tmp_path / "ckpt.pt")
        with pytest.raises(CheckpointError, match="not a checkpoint of dogs .*frozen prefix") as err:
            checkpoint.read(path)
        assert "\n" not in str(err.value)
