"""Every knob of a run, with its default. One flat dict: saved with every checkpoint and result."""
import json

DEFAULTS = {
    # data
    "data": None,              # ImageFolder root with Train/ Validation/ [Test/]; None = built-in digits demo
    "image_size": 224,         # images are decoded once and resized to image_size x image_size
    "cache_dir": None,         # decoded-image + feature cache; None = $DOGS_CACHE or ~/.cache/dogs-tune
    "augment": False,          # on-device random-resized-crop + horizontal flip (turns the feature cache off)
    "feature_cache": True,     # compute a frozen prefix's output once and train only the tail (off when augment)
    "normalize": "auto",       # "imagenet" | "half" (the notebook's mean=std=0.5) | "auto" (imagenet for ResNets)
    # model
    "model": "resnet18",       # "cnn" (the notebook's from-scratch CNN) | "resnet18" | "resnet34" | "resnet50"
    "weights": "DEFAULT",      # torchvision weights name, a path to a .pth state_dict, or "none" for random init
    "head_on": "features",     # "features" (pooled 512/2048-d) | "logits" (the notebook's head on the 1000-d output)
    "head_width": 512,         # hidden width of the MLP head; 0 = a single linear layer
    "dropout": 0.5,            # dropout before the head's last layer
    "unfreeze": 0,             # how many of the last residual stages train (0-4); the rest stay frozen in eval mode
    # optimisation
    "epochs": 10,              # epochs to train (ASHA's max_t in a search)
    "batch_size": 64,
    "lr": 1e-3,                # Adam learning rate of the head (and of the whole CNN)
    "backbone_lr": 1e-4,       # Adam learning rate of the unfrozen residual stages
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
    "seed": 0,                 # None = not seeded
    "metric": "val_acc",       # what "best" means: the epoch kept as best.pt / the trial's best checkpoint (METRICS)
    "mode": "max",             # "max" | "min": whether a higher or a lower `metric` is better
    # arithmetic
    "precision": "auto",       # "auto" (bf16 autocast on a GPU that has it, else fp32) | "bf16" | "fp32"
    "channels_last": True,     # NHWC memory format for convolutions
    "compile": False,          # torch.compile the trainable part of the model
}

MODELS = ("cnn", "resnet18", "resnet34", "resnet50")
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")


def resolve(config=None):
    """Defaults overlaid with `config`; unknown keys are an error that lists the known ones."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise KeyError(f"unknown config key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **config}
    if out["model"] not in MODELS:
        raise ValueError(f"model={out['model']!r}: choose one of {list(MODELS)}")
    if not 0 <= int(out["unfreeze"]) <= 4:
        raise ValueError(f"unfreeze={out['unfreeze']!r}: must be 0..4 residual stages")
    if out["head_on"] not in ("features", "logits"):
        raise ValueError(f"head_on={out['head_on']!r}: choose 'features' or 'logits'")
    if out["metric"] not in METRICS:
        raise ValueError(f"metric={out['metric']!r}: choose one of {list(METRICS)}")
    if out["mode"] not in ("max", "min"):
        raise ValueError(f"mode={out['mode']!r}: choose 'max' or 'min'")
    return out


def parse_value(text):
    """'1e-3' -> 0.001, 'true' -> True, 'none' -> None, 'resnet18' -> 'resnet18' (JSON where it parses)."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_sets(pairs):
    """['lr=1e-3', 'model=cnn'] -> {'lr': 0.001, 'model': 'cnn'}."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: expected key=value, e.g. --set lr=3e-4")
        out[key.strip()] = parse_value(value)
    return out
