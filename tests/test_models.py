"""Models: pretrained weights offline, frozen parts stay frozen, the feature cache changes nothing."""
import os

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
    """An empty TORCH_HOME and a resnet18 state_dict file the test wrote (seeded random weights) at FAKE_WEIGHTS:
    the hub cache takes only torchvision's own files (their sha256 is checked), so tests name this one by path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(123)
    reference = torchvision.models.resnet18().state_dict()
    torch.save(reference, tmp_path / FAKE_WEIGHTS)
    monkeypatch.chdir(tmp_path)   # resolve() makes the relative path absolute from here
    return reference


FAKE_WEIGHTS = "fake-resnet18.pth"


def _offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def test_a_hub_file_that_is_not_torchvisions_is_refused_before_it_is_read(tmp_path, torch_home, monkeypatch):
    # torchvision checks the sha256 only when it downloads: a file copied there by hand was read as ImageNet weights
    _offline(monkeypatch)
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    hub_file.write_bytes((tmp_path / FAKE_WEIGHTS).read_bytes())
    with pytest.raises(models.WeightsError, match=r"is not the file torchvision publishes under that name \(sha256 "
                                                  r"[0-9a-f]{16}\.\.\., expected f37072fd\.\.\.\).*refused, not loaded"):
        models.build_model(resolve({**RESNET, "weights": "DEFAULT"}), 3)


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


class Payload:
    def __reduce__(self):   # unpickling it would call a function: weights_only refuses it
        return (os.getcwd, ())


def test_a_wrong_weights_file_is_one_line_never_a_traceback_nor_random_weights(tmp_path, torch_home, monkeypatch):
    _offline(monkeypatch)
    resnet34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), resnet34)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": torch_home}, wrapped)   # a training checkpoint, not a state_dict
    text, truncated = tmp_path / "text.pth", tmp_path / "truncated.pth"
    text.write_text("hello")
    truncated.write_bytes(resnet34.read_bytes()[:100_000])
    code = tmp_path / "code.pth"
    torch.save({"conv1.weight": Payload()}, code)
    cases = {code: "holds pickled code or objects, not only weights: refused, nothing in it was run",
             resnet34: r"resnet34.pth holds no resnet18 weights: 96 tensors resnet18 does not have \(e.g. layer1.2",
             wrapped: r"is not a state_dict \(a dict of tensors\) but a dict with the keys \['model'\]",
             text: "cannot be read: truncated, or not a file written by torch.save",
             truncated: "cannot be read: truncated, or not a file written by torch.save"}
    for path, message in cases.items():   # was: RuntimeError / KeyError: 101 tracebacks
        with pytest.raises(models.WeightsError, match=message):
            models.build_model(resolve({**RESNET, "weights": str(path)}), 3)
    # the same files in the hub cache under resnet18's name: was a RuntimeError traceback, or "not in the hub cache"
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    for path in (resnet34, truncated):
        hub_file.write_bytes(path.read_bytes())
        with pytest.raises(models.WeightsError, match=f"{hub_file} is not the file torchvision publishes"):
            models.build_model(resolve({**RESNET, "weights": "DEFAULT"}), 3)


@pytest.mark.parametrize("feature_cache", [False, True])
def test_frozen_stages_and_their_batchnorm_stay_bit_identical(tiny_config, torch_home, feature_cache):
    config = {**tiny_config, **RESNET, "weights": FAKE_WEIGHTS, "unfreeze": 1, "feature_cache": feature_cache}
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
    config = {**tiny_config, **RESNET, "weights": FAKE_WEIGHTS, "unfreeze": unfreeze, "epochs": 2 if unfreeze == 0 else 1,
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
    net = models.build_model(resolve({**RESNET, "weights": FAKE_WEIGHTS, "head_on": "logits", "head_width": 512}), 133)
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


# --- the backbone registry (dogs/backbones.py): every entry builds, splits and freezes as it says ---

import copy

from dogs.backbones import AVGPOOL, BACKBONES, FLATTEN, STAGES

PRETRAINED = [name for name, entry in BACKBONES.items() if entry.builder is not None]


def params_of(net, paths):
    return {id(p) for path in paths if path not in (FLATTEN, AVGPOOL) for p in net.get_submodule(path).parameters()}


@pytest.mark.parametrize("name", PRETRAINED)
def test_registry_entry_builds_splits_and_freezes_for_every_unfreeze(name):
    entry = BACKBONES[name]
    assert models.weights_enum(name) is torchvision.models.get_model_weights(entry.builder)
    torch.manual_seed(0)
    net = torchvision.models.get_model(entry.builder, weights=None).eval()
    # a stage is the blocks at one resolution: each stage's output is smaller than the one before
    with torch.no_grad():
        x, sizes = torch.zeros(1, 3, 64, 64), []
        for module in [net.get_submodule(p) for p in entry.stem]:
            x = module(x)
        for paths in entry.stages:
            for p in paths:
                x = net.get_submodule(p)(x)
            sizes.append(x.shape[-1])
        for p in entry.pool:
            x = models.module(net, p)(x)
        assert x.shape == (1, entry.features)  # the registry's feature width is the pooled width
        for p in entry.logits:
            x = net.get_submodule(p)(x)
        assert x.shape == (1, 1000)
        image = torch.randn(2, 3, 64, 64)   # stem + stages + pool + logits = torchvision's own forward
        assert torch.allclose(torch.nn.Sequential(*[models.module(net, p) for p in (*entry.stem, *sum(entry.stages, ()),
                                                    *entry.pool, *entry.logits)])(image), net(image), atol=1e-5)
    assert sizes == sorted(set(sizes), reverse=True) and len(sizes) == STAGES[name]
    for unfreeze in range(STAGES[name] + 1):
        config = resolve({"model": name, "weights": "none", "unfreeze": unfreeze, "head_width": 8})
        copied = copy.deepcopy(net)
        model = models.split(copied, entry, config, num_classes=3)
        # the tail holds exactly the last `unfreeze` stages (+ the stem when all train), pool and head
        cut = STAGES[name] - unfreeze
        expected = {id(p) for p in model.tail[-1].parameters()}
        if unfreeze:
            expected |= params_of(copied, [p for s in entry.stages[cut:] for p in s] + list(entry.pool))
        if unfreeze == STAGES[name]:
            expected |= params_of(copied, entry.stem)
        assert {id(p) for p in model.tail.parameters()} == expected, unfreeze
        assert not any(p.requires_grad for p in model.frozen.parameters())
        # one training step: frozen weights and BatchNorm statistics unchanged, the tail's changed
        optimizer = torch.optim.Rprop(models.param_groups(model, config))  # a step of lr * sign(gradient): any
        # nonzero gradient moves a weight, however tiny or huge (random weights on a 32 px batch of 2 make both)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()
        assert not any(m.training for m in model.frozen.modules())
        loss = nn_loss(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2]))
        loss.backward()
        optimizer.step()
        after, named = model.state_dict(), dict(model.named_parameters())
        changed = {key for key in before if not torch.equal(before[key], after[key])}
        assert not {key for key in changed if key.startswith("frozen.")}, unfreeze
        for key, p in named.items():
            if key.startswith("tail."):  # every trained weight got a gradient; a nonzero one moved it
                assert p.grad is not None and (key in changed or not p.grad.any()), (unfreeze, key)
        tail_stats = {k for k in before if k.endswith("running_mean") and k.startswith("tail.")}
        assert not tail_stats or tail_stats & changed, unfreeze  # trained BatchNorm layers update their statistics
        for i, module in enumerate(model.tail):  # each unfrozen stage (and the head) learned
            if any(True for _ in module.parameters()):
                assert any(k.startswith(f"tail.{i}.") for k in changed), (unfreeze, i)


def nn_loss(logits, y):
    return torch.nn.functional.cross_entropy(logits, y)


def test_cached_and_uncached_features_give_the_same_losses_for_a_non_resnet(tiny_config):
    config = {**tiny_config, "model": "mobilenet_v3_large", "weights": "none", "image_size": 32, "unfreeze": 1,
              "head_width": 16, "epochs": 2, "precision": "fp32", "seed": 0}
    histories = []
    for cached in (False, True):
        run = Run({**config, "feature_cache": cached}, device=torch.device("cpu"), log_fn=lambda m: None)
        assert run.cached == cached
        histories.append(list(run.epochs()))
    for a, b in zip(*histories):
        for key in ("train_loss", "val_loss", "val_macro_f1"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
        assert a["val_acc"] == b["val_acc"]


def test_unfreeze_range_is_each_models_own():
    from dogs.config import ConfigError
    assert resolve({"model": "efficientnet_b0", "unfreeze": 5})["unfreeze"] == 5
    with pytest.raises(ConfigError, match=r"^unfreeze: 5 is out of range for model 'resnet18'; allowed: .*0\.\.4"):
        resolve({"model": "resnet18", "unfreeze": 5})
    with pytest.raises(ConfigError, match=r"unfreeze: 1 .* 'cnn'.*0\.\.0"):
        resolve({"model": "cnn", "unfreeze": 1})


def test_weights_none_on_the_command_line_is_the_word_none():
    from dogs.config import parse_sets
    assert parse_sets(["weights=none", "seed=none"]) == {"weights": "none", "seed": None}
