"""The fast path: one decode per node under concurrent trials, device augmentation, batches from the cache."""
import subprocess
import sys
import textwrap

import numpy as np
import torch

from conftest import make_imagefolder
from dogs.batches import Batches, image_preparer, random_resized_crop_flip

BUILD = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from dogs import cache, data
    _, files, _ = data.labeled_split(sys.argv[1], "Train")
    print("key", cache.cached_images(files, 16, sys.argv[2]).key)
""")


def test_trials_starting_together_decode_once(tmp_path):
    root = make_imagefolder(tmp_path / "d", n_train=40, n_val=1, n_test=0, awkward=False)
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(root), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(out.count("decoded 120 images") for out in outputs) == 1  # one process built, two waited
    assert len({line for out in outputs for line in out.splitlines() if line.startswith("key")}) == 1


def test_crop_flip_with_full_scale_is_the_image_or_its_mirror():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 12, 12)
    y = random_resized_crop_flip(x, scale=(1, 1), ratio=(1, 1))
    same = torch.isclose(y, x, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(y, x.flip(-1), atol=1e-5).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    z = random_resized_crop_flip(x)  # the default crops change the images but not their shape
    assert z.shape == x.shape and not torch.allclose(z, x)


def test_batches_cover_each_readable_image_once_per_epoch_in_a_seeded_order():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, axis=3)
    labels = np.arange(10)
    index = np.array([0, 1, 2, 4, 5, 6, 7, 9])  # rows 3 and 8 were unreadable
    prepare = image_preparer((0, 0, 0), (1 / 255, 1 / 255, 1 / 255), torch.device("cpu"))  # x -> x
    batches = Batches(images, labels, index, 3, torch.device("cpu"), prepare, shuffle=True, seed=1)
    orders = []
    for epoch in (1, 2, 1):
        batches.set_epoch(epoch)
        pairs = [(int(v), int(l)) for x, y in batches for v, l in zip(x[:, 0, 0, 0], y)]
        assert all(v == l for v, l in pairs)  # inputs and labels stay paired
        assert sorted(v for v, _ in pairs) == list(index)
        orders.append([v for v, _ in pairs])
    assert orders[0] == orders[2] and orders[0] != orders[1]
