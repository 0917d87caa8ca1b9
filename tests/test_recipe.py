"""The training recipe: schedules, mixup/cutmix, EMA, the validation metrics, and what config refuses."""
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, top_k_accuracy_score
from torch import nn

from dogs import engine
from dogs.config import ConfigError, resolve

CPU = torch.device("cpu")


class Fixed:
    """Batches of given (x, y) pairs on the CPU, as engine.evaluate iterates them."""
    device = CPU

    def __init__(self, pairs):
        self.pairs = pairs

    def __iter__(self):
        return iter(self.pairs)


def test_top5_and_macro_f1_match_sklearn():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(50, 7, generator=g), torch.randint(0, 6, (50,), generator=g)  # class 6 never true
    logits[:20, 3] += 3  # many predictions of class 3
    pairs = [(logits[s:s + 16], y[s:s + 16]) for s in range(0, 50, 16)]
    got = engine.evaluate(nn.Identity(), lambda x: x, None, Fixed(pairs), None)
    predicted = logits.argmax(1).numpy()
    assert got["macro_f1"] == pytest.approx(f1_score(y.numpy(), predicted, average="macro"))
    assert got["top5"] == pytest.approx(top_k_accuracy_score(y.numpy(), logits.numpy(), k=5, labels=range(7)))
    assert got["acc"] == pytest.approx((predicted == y.numpy()).mean())
    assert got["confusion"].sum() == 50 and got["confusion"][y[0], predicted[0]] >= 1


def test_new_metrics_are_search_metrics_maximised():
    for metric in ("val_top5", "val_macro_f1"):
        assert resolve({"metric": metric})["mode"] == "max"
    with pytest.raises(ConfigError, match="worst epoch"):
        resolve({"metric": "val_macro_f1", "mode": "min"})


def onehot_images(y, classes=3, size=8):
    """Image i is the constant one-hot of its label in the channel axis: its pixel mean IS its label."""
    return nn.functional.one_hot(y, classes).float()[:, :, None, None].expand(-1, -1, size, size).contiguous()


def test_mixup_and_cutmix_targets_are_the_mixed_inputs_label_shares():
    torch.manual_seed(0)
    mix = engine.Mixer(resolve({"model": "cnn", "mixup": 0.4, "cutmix": 1.0}), num_classes=3, prefix=None)
    kinds = set()
    for _ in range(30):
        y = torch.randint(0, 3, (6,))
        x, target = mix(onehot_images(y), y)
        assert x.shape == (6, 3, 8, 8) and target.shape == (6, 3)
        assert torch.allclose(target.sum(1), torch.ones(6))
        assert torch.allclose(x.mean((2, 3)), target, atol=1e-6)  # each label's share = its share of the pixels
        box = (x != x[:, :, :1, :1]).any()                         # cutmix leaves a box; mixup a uniform image
        kinds.add("cutmix" if box else "mixup")
    assert kinds == {"cutmix", "mixup"}  # with both on, each batch gets one of them


def test_mixup_mixes_cached_feature_vectors_and_the_frozen_prefix_output():
    torch.manual_seed(0)
    config = resolve({"model": "cnn", "mixup": 1.0})
    y = torch.tensor([0, 1, 2, 2])
    features = nn.functional.one_hot(y, 3).float()  # (B, F) as the feature cache gives them
    x, target = engine.Mixer(config, 3, prefix=None)(features, y)
    assert x.shape == (4, 3) and torch.allclose(x, target)
    prefix = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # a frozen prefix: mixup comes after it
    x, target = engine.Mixer(config, 3, prefix=prefix)(onehot_images(y), y)
    assert x.shape == (4, 3) and torch.allclose(x, target)


def lrs(config, steps_per_epoch=4):
    config = resolve(config)
    param = nn.Parameter(torch.zeros(1))
    optimizer = engine.OPTIMIZERS[config["optimizer"]]([{"params": [param], "lr": config["lr"]}], 0.0)
    schedule = engine.make_schedule(optimizer, config, steps_per_epoch)
    out = []
    for _ in range(config["epochs"] * steps_per_epoch):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return out


def test_schedules_warm_up_then_follow_their_shape():
    assert lrs({"lr": 0.1, "epochs": 3}) == [0.1] * 12                               # constant: no scheduler
    warm = lrs({"lr": 0.1, "epochs": 3, "warmup_epochs": 1})
    assert warm[0] == pytest.approx(0.001) and warm[4:] == pytest.approx([0.1] * 8)  # 1% -> lr in one epoch
    assert all(a < b for a, b in zip(warm[:4], warm[1:5]))
    cosine = lrs({"lr": 0.1, "epochs": 3, "warmup_epochs": 1, "schedule": "cosine", "optimizer": "adamw"})
    assert cosine[4] == pytest.approx(0.1) and all(a > b for a, b in zip(cosine[4:], cosine[5:]))
    assert cosine[-1] < 0.01
    onecycle = lrs({"lr": 0.1, "epochs": 3, "warmup_epochs": 1, "schedule": "onecycle", "optimizer": "sgd"})
    assert max(onecycle) == pytest.approx(0.1, rel=1e-3) and int(np.argmax(onecycle)) in (3, 4)
    assert onecycle[0] < 0.01 and onecycle[-1] < 1e-3


@pytest.mark.parametrize("config, words", [
    ({"warmup_epochs": 3, "epochs": 3}, ["warmup_epochs: 3", "less than epochs (3)", "0..2"]),
    ({"schedule": "onecycle"}, ["onecycle", "warmup_epochs >= 1"]),
    ({"cutmix": 1.0}, ["cutmix: 1.0", "cached frozen features", "feature_cache false"]),
    ({"model": "convnext_tiny", "unfreeze": 5}, ["unfreeze: 5", "'convnext_tiny'", "0..4"]),
])
def test_combinations_that_cannot_be_honoured_are_refused(config, words):
    with pytest.raises(ConfigError) as err:
        resolve(config)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_cutmix_is_allowed_where_images_reach_the_model():
    assert resolve({"cutmix": 1.0, "feature_cache": False})["cutmix"] == 1.0
    assert resolve({"cutmix": 1.0, "augment": True})["cutmix"] == 1.0
    assert resolve({"cutmix": 1.0, "unfreeze": 4})["cutmix"] == 1.0       # nothing frozen: no feature cache
    assert resolve({"cutmix": 1.0, "model": "cnn"})["cutmix"] == 1.0
