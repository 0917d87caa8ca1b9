"""Caches keyed on everything that changes their content: a walk over every config key, per cache."""
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conftest import make_imagefolder
from dogs import cache, data, decode, features, models
from dogs.config import DEFAULTS, IMAGES, SCHEMA, keys_where, resolve
from dogs.device import amp_dtype
from dogs.engine import make_batches
from dogs.splits import load_splits

CPU = torch.device("cpu")
# the keys each cache key may ignore, as the schema declares them (changes=...); every other key must change it
IMAGE_CACHE_IGNORES = {key for key in SCHEMA if SCHEMA[key].changes != IMAGES}
FEATURE_CACHE_IGNORES = set(keys_where(changes=None))


def feature_cache_key(config, files, device):
    """The frozen-feature cache key a run of `config` on `files` uses: builds the model, decodes nothing.

    The prefix is built as Run builds it (seeded, pretrained weights loaded), in a forked RNG.
    """
    config = resolve(config)
    with torch.random.fork_rng(devices=[]):
        if config["seed"] is not None:
            torch.manual_seed(config["seed"])
        model = models.build_model(config, num_classes=2)
    if config["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    mean, std = models.normalization(config)
    return features.feature_key(cache.image_cache_key(config, files), model.frozen, mean, std,
                                amp_dtype(config, device), device, config["channels_last"])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(data folder, another data folder, a resnet18 .pth that is not the default weights)."""
    tmp = tmp_path_factory.mktemp("keys")
    root = make_imagefolder(tmp / "data", n_train=2, n_val=1, n_test=0, awkward=False)
    other = make_imagefolder(tmp / "other", n_train=2, n_val=1, n_test=0, awkward=False, seed=1)
    weights = tmp / "other-resnet18.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        torch.save(torchvision.models.resnet18().state_dict(), weights)
    return root, other, weights


def alternatives(other, weights):
    """A valid value other than the default for EVERY config key: a new key without one fails the walk."""
    return {
        "data": str(other), "image_size": 96, "cache_dir": "/elsewhere/cache", "augment": True,
        "feature_cache": False, "normalize": "half", "model": "resnet34", "weights": str(weights),
        "head_on": "logits", "head_width": 0, "dropout": 0.1, "unfreeze": 1, "epochs": 3, "batch_size": 32,
        "lr": 3e-4, "backbone_lr": 1e-5, "weight_decay": 1e-4, "label_smoothing": 0.1, "seed": 1,
        "optimizer": "sgd", "schedule": "cosine", "warmup_epochs": 1, "mixup": 0.2, "cutmix": 1.0, "ema": 0.99,
        "metric": "val_loss", "mode": "min", "precision": "bf16", "channels_last": False, "compile": True,
        "holdout": 0.3,
    }


# values only valid together with another: mode min needs a loss metric; a new metric takes its own mode;
# cutmix pastes images, so it needs the feature cache off
COMPANIONS = {"mode": {"metric": "val_loss"}, "metric": {"mode": None}, "cutmix": {"feature_cache": False}}


def files_of(config):
    root, _ = data.resolve_root(config["data"], config["cache_dir"])
    return data.labeled_split(root, data.TRAIN)[1]


def keys_left_unchanged(key_of, base, other_values):
    """The config keys whose alternative value leaves key_of(config) as it is for `base`."""
    missing = sorted(set(DEFAULTS) - set(other_values))
    assert not missing, f"config key(s) {missing}: add an alternative value to the table in this test and either " \
                        f"hash them into the cache keys or declare what they change in dogs/config.py (changes=)"
    unchanged, base_key = set(), key_of(base)
    for name in DEFAULTS:
        assert other_values[name] != base[name], name
        if key_of({**base, **COMPANIONS.get(name, {}), name: other_values[name]}) == base_key:
            unchanged.add(name)
    return unchanged


def test_image_cache_key_changes_with_every_config_key_not_declared_ignored(folders):
    root, other, weights = folders
    base = resolve({"data": str(root)})
    unchanged = keys_left_unchanged(lambda c: cache.image_cache_key(c, files_of(c)), base,
                                    alternatives(other, weights))
    assert unchanged == IMAGE_CACHE_IGNORES  # both ways: no key forgotten, no stale declaration


def test_feature_cache_key_changes_with_every_config_key_not_declared_ignored(folders):
    root, other, weights = folders
    base = resolve({"data": str(root), "weights": "none"})  # random prefix: the seed decides its weights
    unchanged = keys_left_unchanged(lambda c: feature_cache_key(c, files_of(c), CPU), base,
                                    alternatives(other, weights))
    assert unchanged == FEATURE_CACHE_IGNORES


def test_trials_differing_only_in_normalize_get_their_own_frozen_features(folders, tmp_path):
    root, _, _ = folders
    arrays = {}
    for normalize in ("imagenet", "half"):
        config = resolve({"data": str(root), "weights": "none", "image_size": 32, "normalize": normalize,
                          "cache_dir": str(tmp_path)})
        _, classes, train, _ = load_splits(config, log_fn=lambda m: None)
        torch.manual_seed(0)
        model = models.build_model(config, len(classes)).to(memory_format=torch.channels_last)
        batches = make_batches(train, model, config, CPU, None, train=False)
        key = feature_cache_key(config, files_of(config), CPU)  # the cheap key is the key training uses
        assert (tmp_path / "features" / f"{key}.npy").exists()
        arrays[normalize] = np.asarray(batches.array)
    assert len(list((tmp_path / "features").glob("*.npy"))) == 2
    assert not np.allclose(arrays["imagenet"], arrays["half"])


def test_feature_key_changes_with_device_type_dtype_normalization_and_prefix_weights():
    frozen = nn.Sequential(nn.Conv2d(3, 4, 3))

    def key(amp=None, device=CPU, mean=(0.5, 0.5, 0.5), channels_last=True):
        return features.feature_key("images", frozen, mean, (0.5, 0.5, 0.5), amp, device, channels_last)

    first = key()
    variants = {key(amp=torch.bfloat16), key(device=torch.device("meta")), key(mean=(0.4, 0.5, 0.5)),
                key(channels_last=False)}
    assert len(variants) == 4 and first not in variants
    with torch.no_grad():
        frozen[0].weight[0, 0, 0, 0] += 1
    assert key() != first


def test_image_cache_key_changes_with_the_decode_options(folders, tmp_path, monkeypatch):
    root, _, _ = folders
    files = data.labeled_split(root, data.TRAIN)[1]
    before = cache.cached_images(files, 16, tmp_path)
    monkeypatch.setitem(decode.DECODE, "resample", "NEAREST")
    after = cache.cached_images(files, 16, tmp_path)
    assert after.key != before.key and not np.array_equal(after.images, before.images)
