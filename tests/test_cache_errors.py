"""A cache folder we cannot write (read-only, full disk): one CacheError naming the folder and DOGS_CACHE,
and nothing half-written that a later run would trust."""
import errno
import logging
import pathlib

import numpy as np
import pytest
import torch

from conftest import make_imagefolder
from dogs import cache, data, decode, models
from dogs.config import resolve
from dogs.engine import make_batches
from dogs.splits import load_splits
from dogs.errors import CacheError


@pytest.fixture
def files(tmp_path):
    root = make_imagefolder(tmp_path / "d", n_train=2, n_val=1, n_test=0, awkward=False)
    return data.labeled_split(root, data.TRAIN)[1]


def unwritable(tmp_path):
    """A cache folder that cannot be created, even by root: its parent is a regular file."""
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "cache"


def assert_one_line_naming(err, folder):
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and "DOGS_CACHE" in message


def test_read_only_cache_folder_is_one_cache_error_for_the_image_cache(tmp_path, files):
    folder = unwritable(tmp_path)
    with pytest.raises(CacheError) as err:
        cache.cached_images(files, 16, folder)
    assert_one_line_naming(err, folder)


def test_read_only_cache_folder_is_one_cache_error_for_the_demo(tmp_path):
    folder = unwritable(tmp_path)
    with pytest.raises(CacheError) as err:
        data.resolve_root(None, folder)
    assert_one_line_naming(err, folder)


def test_read_only_cache_folder_is_one_cache_error_for_the_feature_cache(tmp_path, files):
    config = resolve({"data": str(files[0].parents[2]), "weights": "none", "image_size": 16,
                      "cache_dir": str(tmp_path / "cache")})
    _, classes, train, _ = load_splits(config, log_fn=lambda m: None)  # the image cache is writable...
    (tmp_path / "cache" / "features").write_text("")  # ...the feature cache's folder cannot be made
    model = models.build_model(config, len(classes)).to(memory_format=torch.channels_last)
    with pytest.raises(CacheError) as err:
        make_batches(train, model, config, torch.device("cpu"), None, train=False)
    assert_one_line_naming(err, tmp_path / "cache")


@pytest.mark.parametrize("fails", ["array", "metadata"])
def test_full_disk_is_one_cache_error_and_leaves_no_cache_a_later_run_trusts(tmp_path, files, monkeypatch,
                                                                              caplog, fails):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fails == "array":
        monkeypatch.setattr(np.lib.format, "open_memmap", no_space)
    else:
        monkeypatch.setattr(pathlib.Path, "write_text", no_space)
    with pytest.raises(CacheError) as err:
        cache.cached_images(files, 16, tmp_path / "cache")
    assert_one_line_naming(err, tmp_path / "cache")
    assert "No space left on device" in str(err.value)
    assert not list((tmp_path / "cache" / "images").glob("*.json"))  # no metadata: nothing is trusted
    assert not list((tmp_path / "cache" / "images").glob(".*tmp*"))  # no temp file left behind
    # the disk has room again: the next run builds a complete cache
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="dogs"):
        images = cache.cached_images(files, 16, tmp_path / "cache")
    assert "decoded 6 images" in caplog.text
    assert images.ok.all() and np.array_equal(images.images[0], decode.load_rgb(files[0], 16))
