"""Models: the notebook's from-scratch CNN, or a torchvision ResNet with an MLP head.

Every model is a `Net`: a `frozen` prefix (no gradients, always in eval mode so its BatchNorm statistics
never drift) followed by a `tail` that trains. `unfreeze` moves the last residual stages into the tail.
Because the prefix is a pure function of the image, its output can be cached (see features.py).
"""
import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from .errors import WeightsError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)



class Net(nn.Module):
    def __init__(self, frozen, tail):
        super().__init__()
        self.frozen, self.tail = frozen, tail
        self.frozen.requires_grad_(False)
        self.frozen.eval()

    def train(self, mode=True):
        super().train(mode)
        self.frozen.eval()  # frozen BatchNorm layers keep their ImageNet statistics
        return self

    def forward(self, x):
        return self.tail(self.frozen(x))


def head(in_features, width, dropout, num_classes):
    """The MLP head: Linear -> ReLU -> Dropout -> Linear, or Dropout -> Linear when width is 0."""
    if not width:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    return nn.Sequential(nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(width, num_classes))


def notebook_cnn(config, num_classes):
    """The origin notebook's CNN (3x3 convolutions; its head is our MLP head, width 512 and dropout 0.5 there)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(64), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(128), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        head(128, config["head_width"], config["dropout"], num_classes),
    )


def pretrained_state_dict(name, weights):
    """ImageNet weights for torchvision model `name`, offline-first.

    `weights` is a torchvision weights name ("DEFAULT", "IMAGENET1K_V1", ...), looked up in the torch hub
    cache ($TORCH_HOME/hub/checkpoints) before any download, or a path to a saved state_dict.
    """
    if Path(str(weights)).suffix in (".pth", ".pt") or os.sep in str(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist; pass weights=<path to a {name} state_dict "
                               f".pth>, a torchvision weights name such as DEFAULT, or none for random init")
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        enum = torchvision.models.get_model_weights(name)[weights]
    except KeyError:
        choices = list(torchvision.models.get_model_weights(name).__members__)
        raise WeightsError(f"weights={weights!r} is not a {name} weights name; choose one of {choices}, "
                           f"a path to a .pth file, or none") from None
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return enum.get_state_dict(progress=False, check_hash=False)
    except Exception as e:  # offline, proxy, disk full: never fall back to random weights
        filename = enum.url.rsplit("/", 1)[-1]
        raise WeightsError(
            f"could not load {name} weights {enum}: not in the hub cache ({hub / filename}) and the download "
            f"failed ({type(e).__name__}: {e}). Fix: on a machine with internet download {enum.url} and copy it to "
            f"{hub / filename} (set TORCH_HOME to choose the cache folder), or pass weights=/path/to/{filename}"
        ) from e


def resnet(config, num_classes, load_weights=True):
    """A torchvision ResNet split into a frozen prefix and a trainable tail (last `unfreeze` stages + head)."""
    name, unfreeze = config["model"], int(config["unfreeze"])
    net = torchvision.models.get_model(name, weights=None)
    if load_weights and str(config["weights"]).lower() != "none":
        net.load_state_dict(pretrained_state_dict(name, config["weights"]))
    features = net.fc.in_features
    stem = [net.conv1, net.bn1, net.relu, net.maxpool]
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    pool = [net.avgpool, nn.Flatten()]
    if config["head_on"] == "logits":  # the notebook's variant: the head reads the 1000 ImageNet logits
        pool.append(net.fc)
        features = net.fc.out_features
    mlp = head(features, config["head_width"], config["dropout"], num_classes)
    if unfreeze == 0:  # everything but the head is frozen
        return Net(nn.Sequential(*stem, *stages, *pool), nn.Sequential(mlp))
    if unfreeze == 4:  # a full fine-tune: the stem trains too
        return Net(nn.Sequential(), nn.Sequential(*stem, *stages, *pool, mlp))
    cut = 4 - unfreeze
    return Net(nn.Sequential(*stem, *stages[:cut]), nn.Sequential(*stages[cut:], *pool, mlp))


def build_model(config, num_classes, load_weights=True):
    """The model a config describes; `load_weights=False` when a checkpoint will fill in every weight."""
    if config["model"] == "cnn":
        return Net(nn.Sequential(), notebook_cnn(config, num_classes))
    return resnet(config, num_classes, load_weights)


def param_groups(model, config):
    """Adam parameter groups: the head at `lr`, unfrozen residual stages at `backbone_lr`."""
    if config["model"] == "cnn":
        return [{"params": list(model.tail.parameters()), "lr": config["lr"]}]
    head_params = list(model.tail[-1].parameters())
    head_ids = {id(p) for p in head_params}
    backbone = [p for p in model.tail.parameters() if id(p) not in head_ids]
    groups = [{"params": head_params, "lr": config["lr"]}]
    if backbone:
        groups.append({"params": backbone, "lr": config["backbone_lr"]})
    return groups


def normalization(config):
    """(mean, std) the images are normalized with (config["normalize"] was checked by dogs.config.resolve)."""
    choice = config["normalize"]
    if choice == "auto":
        choice = "half" if config["model"] == "cnn" else "imagenet"
    return {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": (HALF_MEAN, HALF_STD)}[choice]
