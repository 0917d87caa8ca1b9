"""Models: pretrained weights offline, frozen parts stay frozen, the feature cache changes nothing."""
import pytest
import torch
import torchvision

from dogs import models
from dogs.config import resolve
from dogs.engine import Run

RESNET = {"model": "resnet18", "image_size": 32, "batch_size": 16, "epochs": 1, "lr": 1e-3, "seed": 0,
          "head_width": 32}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A TORCH_HOME whose hub cache holds a resnet18 'ImageNet' file the test wrote (seeded random weights)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(123)
    reference = torchvision.models.resnet18().state_dict()
    filename = torchvision.models.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    torch.save(reference, checkpoints / filename)
    return reference


def _offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def test_weights_come_from_the_hub_cache_offline(torch_home, monkeypatch):
    _offline(monkeypatch)
    net = models.build_model(resolve({**RESNET, "weights": "DEFAULT"}), 3)
    loaded = net.state_dict()
    assert torch.equal(loaded["frozen.0.weight"], torch_home["conv1.weight"])  # conv1 is the prefix's first module


def test_weights_from_an_explicit_file(tmp_path, torch_home):
    path = tmp_path / "my-resnet18.pth"
    torch.save(torch_home, path)
    net = models.build_model(resolve({**RESNET, "weights": str(path)}), 3)
    assert torch.equal(net.state_dict()["frozen.0.weight"], torch_home["conv1.weight"])


def test_missing_weights_give_a_fix_not_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    _offline(monkeypatch)
    with pytest.raises(models.WeightsError) as err:
        models.build_model(resolve({**RESNET, "weights": "DEFAULT"}), 3)
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and "TORCH_HOME" in message and "https://download.pytorch.org" in message
    with pytest.raises(models.WeightsError, match="does not exist"):
        models.build_model(resolve({**RESNET, "weights": str(tmp_path / "nope.pth")}), 3)
    with pytest.raises(models.WeightsError, match="IMAGENET1K_V1"):
        models.build_model(resolve({**RESNET, "weights": "IMAGENET9K"}), 3)


@pytest.mark.parametrize("feature_cache", [False, True])
def test_frozen_stages_and_their_batchnorm_stay_bit_identical(tiny_config, torch_home, feature_cache):
    config = {**tiny_config, **RESNET, "weights": "DEFAULT", "unfreeze": 1, "feature_cache": feature_cache}
    run = Run(config, device=torch.device("cpu"), log_fn=lambda m: None)
    assert run.cached == feature_cache
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    list(run.epochs())
    after = run.model.state_dict()
    frozen = [k for k in before if k.startswith("frozen.")]
    assert any("running_mean" in k for k in frozen)  # BatchNorm statistics are among them
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not any(p.requires_grad for p in run.model.frozen.parameters())
    layer4 = [k for k in before if k.startswith("tail.0.") and k.endswith("weight")]
    assert layer4 and all(not torch.equal(before[k], after[k]) for k in layer4)  # the unfrozen stage learned
    assert not torch.equal(before["tail.0.0.bn1.running_mean"], after["tail.0.0.bn1.running_mean"])


@pytest.mark.parametrize("unfreeze", [0, 2])
def test_training_on_cached_features_equals_training_through_the_frozen_prefix(tiny_config, torch_home, unfreeze):
    config = {**tiny_config, **RESNET, "weights": "DEFAULT", "unfreeze": unfreeze, "epochs": 2 if unfreeze == 0 else 1,
              "precision": "fp32"}
    runs, histories = [], []
    for cached in (False, True):  # one after the other: each run seeds the global RNG that dropout draws from
        runs.append(Run({**config, "feature_cache": cached}, device=torch.device("cpu"), log_fn=lambda m: None))
        histories.append(list(runs[-1].epochs()))
    assert [r.cached for r in runs] == [False, True]
    for a, b in zip(*histories):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
        assert a["val_acc"] == b["val_acc"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = [r.model.eval()(x) for r in runs]
    assert torch.allclose(logits[0], logits[1], atol=1e-4)


def test_notebook_resnet_variant_puts_the_head_on_the_1000_logits(torch_home):
    net = models.build_model(resolve({**RESNET, "head_on": "logits", "head_width": 512}), 133)
    out = net.frozen(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 1000)
    assert [type(m).__name__ for m in net.tail[0]] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert net.tail[0][0].in_features == 1000 and net.tail[0][-1].out_features == 133


def test_unfreeze_moves_stages_into_the_tail():
    for unfreeze, trainable_stages in [(0, 0), (1, 1), (3, 3)]:
        net = models.build_model(resolve({**RESNET, "weights": "none", "unfreeze": unfreeze}), 3)
        tail_stages = sum(isinstance(m, torch.nn.Sequential) and isinstance(m[0], torchvision.models.resnet.BasicBlock)
                          for m in net.tail)
        assert tail_stages == trainable_stages
    full = models.build_model(resolve({**RESNET, "weights": "none", "unfreeze": 4}), 3)
    assert len(full.frozen) == 0  # a full fine-tune: the stem trains too
    groups = models.param_groups(full, resolve({**RESNET, "unfreeze": 4, "backbone_lr": 1e-5}))
    assert [g["lr"] for g in groups] == [1e-3, 1e-5]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in full.parameters())
