"""Every knob of a run: one table of key -> default, type, allowed values, help and what reads it. The single
source of truth.

`resolve()` checks a whole config against it; `check_value()` / `problem()` check one value and are what
every other place asks (the command lines' --set, config files, search spaces, checkpoints); `keys_where()`
tells the caches, resume, the combination check and the search which keys each must read. The resolved
config is one flat dict, saved with every checkpoint and result. Importable without torch.
"""
import difflib
import json
import math
import numbers
import os
import re
import typing
from dataclasses import dataclass
from typing import NamedTuple

import yaml

from .backbones import BACKBONES, STAGES
from .errors import ConfigError


@dataclass(frozen=True)
class Range:
    """low..high; open ends exclude the bound. str() is what an error message shows."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x):
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self):
        low, high = _number(self.low), _number(self.high)
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {low}"
        if not (self.low_open or self.high_open) and isinstance(low, int) and isinstance(high, int):
            return f"in {low}..{high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(x):
    """4294967295.0 -> 4294967295, 0.5 -> 0.5 (for messages)."""
    return int(x) if math.isfinite(x) and float(x).is_integer() else x


class Key(NamedTuple):
    """One config key or search setting (tune.settings): its default, its Python type (`int | None`: null allowed
    too), what is allowed (choices or a Range; None = any), a help line, what else reads it (the caches, resume, the
    combination rule, the search), and what tune.search's command line says and does with it."""
    default: object
    type: object
    allowed: object
    help: str
    changes: str | None = None           # what its value changes: "images" (decoded, so the features too), "features"
    resume_may_change: bool = False      # may differ between a checkpoint and the run that continues it
    combination: bool = False            # read by combination_problem
    set_by_search: str | None = None     # not a search space's params entry: the search sets it; where to set it
    smoke: object = None                 # its value under tune.search --smoke-test; None = left as it is
    flag_note: str | None = None         # what its tune.search flag's help says beyond `help`
    flag_choices: bool = True            # False: its flag takes any text, and the check names the allowed values
    resource: bool = False               # what a trial holds: in the resources group of tune.search --help
    why_fixed: str | None = None         # why tune.search --resume refuses another value, where that is not plain


MODELS = tuple(BACKBONES)                                         # dogs/backbones.py: one entry per model
# every score an epoch reports; a run's score is best_<metric> over its epochs (natural_mode: max unless a loss)
METRICS = ("val_acc", "val_loss", "val_top5", "val_macro_f1", "train_acc", "train_loss")
SEEDS = Range(0, 2**32 - 1)                                       # what numpy's seed takes
IMAGES, FEATURES = "images", "features"

# changes: each cache key hashes what its bytes depend on (tests/test_cache_keys.py walks every key both ways).
#   IMAGES: the file list and the resolution, all the decoder reads; their features change with them.
#   FEATURES: normalization, the frozen prefix (architecture and weights: model, weights, head_on, unfreeze, the seed
#   of random weights), the autocast dtype and the memory format. Every other key acts after both caches.
# resume_may_change: every other key must match a checkpoint's, because it changes the model or what it sees, the
#   optimizer (its saved state holds lr, backbone_lr, weight_decay: a new value would be silently dropped), the
#   schedule and its position, the seeded draws (shuffle, dropout, mixing), or what "best" means. epochs may grow
#   only with schedule constant (cosine and onecycle span the epochs); data must be the same folder and classes.
SCHEMA = {
    # data
    "data":            Key(None, str | None, None, "ImageFolder root with Train/ Validation/ [Test/]; null = the built-in digits demo", changes=IMAGES, resume_may_change=True,
                           set_by_search="give the data folder with --data DIR; every trial of a search reads the same data"),
    "image_size":      Key(224, int, Range(8, 2048), "images are decoded once and resized to image_size x image_size", changes=IMAGES, smoke=32),
    "cache_dir":       Key(None, str | None, None, "decoded-image + feature cache; null = $DOGS_CACHE or ~/.cache/dogs-tune", resume_may_change=True),
    "augment":         Key(False, bool, None, "on-device random-resized-crop + horizontal flip; turns the feature cache off", combination=True),
    "feature_cache":   Key(True, bool, None, "compute a frozen prefix's output once and train only the tail; off when augment", combination=True),
    "normalize":       Key("auto", str, ("auto", "imagenet", "half"), "imagenet mean/std; half = mean and std 0.5 as in the notebook; auto = half for the CNN, imagenet for ResNets", changes=FEATURES),
    # model
    "model":           Key("resnet18", str, MODELS, "cnn = the notebook's from-scratch CNN, or a pretrained torchvision backbone (dogs/backbones.py)", changes=FEATURES, combination=True),
    "weights":         Key("DEFAULT", str, None, "torchvision weights name, a path to a .pth state_dict, or none for random init", changes=FEATURES, smoke="none"),
    "head_on":         Key("features", str, ("features", "logits"), "the head reads the pooled features, or the 1000 ImageNet logits as in the notebook", changes=FEATURES),
    "head_width":      Key(512, int, Range(0), "hidden width of the MLP head; 0 = a single linear layer"),
    "dropout":         Key(0.5, float, Range(0, 1, high_open=True), "dropout before the head's last layer"),
    "unfreeze":        Key(0, int, Range(0, max(STAGES.values())), "how many of the model's last stages train (its own count: resnets 4, efficientnets 5, ...; all = the whole network); the rest stay frozen in eval mode", changes=FEATURES, combination=True),
    # optimisation
    "epochs":          Key(10, int, Range(1), "epochs to train; in a search, search.epochs sets it: ASHA's max_t", resume_may_change=True, combination=True,
                           set_by_search="set search.epochs instead (--epochs on the command line); it is ASHA's max_t as well"),
    "batch_size":      Key(64, int, Range(1), "images per step"),
    "optimizer":       Key("adam", str, ("adam", "adamw", "sgd"), "adam, adamw (decoupled weight decay) or sgd (Nesterov, momentum 0.9)"),
    "lr":              Key(1e-3, float, Range(0, low_open=True), "peak learning rate of the head, and of the whole CNN"),
    "backbone_lr":     Key(1e-4, float, Range(0, low_open=True), "peak learning rate of the unfrozen backbone stages"),
    "weight_decay":    Key(0.0, float, Range(0), "weight decay of the optimizer (adam: L2 in the gradient; adamw, sgd: as torch defines it)"),
    "schedule":        Key("constant", str, ("constant", "cosine", "onecycle"), "learning rate per step after the warm-up: constant, cosine to 0, or one-cycle (rises for warmup_epochs, then anneals)", combination=True),
    "warmup_epochs":   Key(0, int, Range(0), "epochs of linear warm-up from 1% of the learning rate (onecycle: its rising phase, >= 1); less than epochs", combination=True),
    "label_smoothing": Key(0.0, float, Range(0, 1, high_open=True), "cross-entropy label smoothing"),
    "mixup":           Key(0.0, float, Range(0), "mixup alpha, 0 = off: pairs of the trained part's inputs (images, or the frozen prefix's features) and their labels mixed by Beta(alpha, alpha), per batch"),
    "cutmix":          Key(0.0, float, Range(0), "cutmix alpha, 0 = off: a box of another image pasted in, labels mixed by its area, per batch; needs images (no feature cache); with mixup, each batch uses one of the two", combination=True),
    "ema":             Key(0.0, float, Range(0, 1, high_open=True), "decay of an exponential moving average of the trained weights per step, 0 = off; when on, the average is what is evaluated and saved"),
    "seed":            Key(0, int | None, SEEDS, "shuffle, init, dropout and augmentation seed; null = not seeded", changes=FEATURES),
    # what "best" means
    "metric":          Key("val_acc", str, METRICS, "the score: a run's best epoch and best checkpoint are those with the best metric",
                           set_by_search="set search.metric instead (--metric); every trial is scored by the search's metric",
                           flag_note=f"one of {', '.join(METRICS)}; a trial's score is best_<metric> over its epochs",
                           flag_choices=False),   # the space check refuses an unknown metric, naming the known ones
    "mode":            Key(None, str | None, ("max", "min"), "max for accuracies, min for losses; null = the metric's own",
                           set_by_search="set search.mode instead (--mode); every trial is scored by the search's mode"),
    "holdout":         Key(0.0, float, Range(0, 0.9), "fraction of Validation held out (stratified, seeded, the same part for every run): val_* scores count the rest, holdout_* the part; 0 = off; in a search, search.holdout sets it",
                           set_by_search="set search.holdout instead; every trial of a search holds out the same part of Validation"),
    # arithmetic
    "precision":       Key("auto", str, ("auto", "bf16", "fp32"), "auto = bf16 autocast on a GPU that has it, else fp32", changes=FEATURES),
    "channels_last":   Key(True, bool, None, "NHWC memory format for convolutions", changes=FEATURES, resume_may_change=True),
    "compile":         Key(False, bool, None, "torch.compile the trainable part of the model", resume_may_change=True),
}

DEFAULTS = {key: spec.default for key, spec in SCHEMA.items()}


def keys_where(**fields):
    """The config keys whose entries have these field values, in schema order: keys_where(changes=IMAGES)."""
    return tuple(key for key, spec in SCHEMA.items() if all(getattr(spec, f) == v for f, v in fields.items()))


TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def value_type(spec):
    """The type of a key's non-null values: int for `int | None`."""
    return next(t for t in typing.get_args(spec.type) or (spec.type,) if t is not type(None))


def nullable(spec):
    return type(None) in typing.get_args(spec.type)


def allowed(spec):
    """What a key allows, in words: 'a number > 0', "one of ['cnn', 'resnet18']", 'an integer in 0..4 or null'."""
    if isinstance(spec.allowed, tuple):
        words = f"one of {list(spec.allowed)}"
    else:
        words = TYPE_NAMES[value_type(spec)] + (f" {spec.allowed}" if spec.allowed is not None else "")
    return words + (" or null" if nullable(spec) else "")


def _has_type(kind, value):
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):     # True is an int in Python; never a number here
        return False
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, str)


def problem(spec, value):
    """None when `value` is allowed by `spec` (a Key), else why not and what is allowed, in one line."""
    if value is None and nullable(spec):
        return None
    kind = value_type(spec)
    what = f"allowed: {allowed(spec)} ({spec.help})"
    if not _has_type(kind, value):
        return f"{value!r} has the wrong type; {what}"
    if kind in (int, float) and not math.isfinite(value):
        return f"{value!r} is not a finite number; {what}"
    if spec.allowed is not None and value not in spec.allowed:
        return f"{value!r} is not allowed; {what}"
    return None


def did_you_mean(name, known):
    """' (did you mean 'lr'?)' for a mistyped name close to a known one, else ''."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_value(key, value):
    """Raise ConfigError unless `key` is a config key and `value` is allowed for it."""
    if key not in SCHEMA:
        raise ConfigError(f"unknown config key {key!r} (given {value!r}){did_you_mean(key, SCHEMA)}; "
                          f"known keys: {sorted(SCHEMA)}")
    why = problem(SCHEMA[key], value)
    if why:
        raise ConfigError(f"{key}: {why}")


def natural_mode(metric):
    """The mode that picks the best epoch of `metric`: max for accuracies, min for losses."""
    return "min" if metric.endswith("_loss") else "max"


def metric_mode_problem(metric, mode):
    """None, or why a metric/mode pair would pick the worst epoch (accuracies are maximised, losses minimised)."""
    right = natural_mode(metric)
    if mode != right:
        return f"mode {mode!r} with metric {metric!r} would pick the worst epoch; allowed: mode {right!r} for {metric}"
    return None


def has_frozen_prefix(config):
    """Whether part of the model stays frozen: a pretrained backbone with fewer than all its stages unfrozen."""
    return 0 < STAGES[config["model"]] and config["unfreeze"] < STAGES[config["model"]]


def feature_cache_applies(config):
    """Whether a run trains on cached frozen features (feature_cache on, augment off, a frozen prefix)."""
    return config["feature_cache"] and not config["augment"] and has_frozen_prefix(config)


# every key combination_problem reads (tests/test_spaces.py checks it). A search space's combination check tries
# every value these can take together at the ends of their ranges, and one value of every other key: exact while
# each rule compares each number with a threshold (unfreeze > stages, warmup_epochs == 0, cutmix != 0, ...)
COMBINATION_KEYS = keys_where(combination=True)


def combination_problem(config):
    """None, or (why, the keys it names): values that are each allowed but cannot be honoured together (a checked,
    complete config). The keys are what a search space's combination check shows the user, with their values."""
    model, unfreeze, stages = config["model"], config["unfreeze"], STAGES[config["model"]]
    if unfreeze > stages:
        why = "the CNN trains from scratch, all of it" if stages == 0 else f"{model} has {stages} stages"
        return (f"unfreeze: {unfreeze!r} is out of range for model {model!r}; allowed: an integer in 0..{stages} "
                f"for {model} ({why})"), ("model", "unfreeze")
    if config["warmup_epochs"] and config["warmup_epochs"] >= config["epochs"]:
        return (f"warmup_epochs: {config['warmup_epochs']!r} is not less than epochs ({config['epochs']}); "
                f"allowed: an integer in 0..{config['epochs'] - 1} with epochs {config['epochs']}"), \
            ("warmup_epochs", "epochs")
    if config["schedule"] == "onecycle" and config["warmup_epochs"] == 0:
        return ("schedule: 'onecycle' rises for warmup_epochs, then anneals; allowed with warmup_epochs >= 1 "
                "(given 0), or schedule constant or cosine"), ("schedule", "warmup_epochs")
    if config["cutmix"] and feature_cache_applies(config):
        return (f"cutmix: {config['cutmix']!r} pastes boxes of images, but this run trains on cached frozen features "
                f"({model} with unfreeze {unfreeze} < {stages}); allowed: cutmix 0, or feature_cache false "
                f"(or augment true), or mixup, which mixes features too"), ("cutmix", "unfreeze", "feature_cache", "augment")
    return None


def weights_file(value):
    """Whether a `weights` value names a file (a .pth/.pt name, or a path with a folder) rather than a weights name."""
    return isinstance(value, str) and (os.path.splitext(value)[1] in (".pth", ".pt") or os.sep in value)


def absolute_path(key, value):
    """A weights file or a cache_dir as an absolute path (search trials run in folders of their own, checkpoints
    are read from anywhere: a relative path would name another file there); any other value as it is."""
    if key == "weights" and weights_file(value) or key == "cache_dir" and isinstance(value, str):
        return os.path.abspath(os.path.expanduser(value))
    return value


def resolve(config=None):
    """Defaults overlaid with `config`, every value checked; unknown keys are an error that lists the known ones."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}{''.join(did_you_mean(k, SCHEMA) for k in unknown)}; "
                          f"known keys: {sorted(SCHEMA)}")
    out = {**DEFAULTS, **config}
    for key, value in out.items():
        check_value(key, value)
    out = {key: absolute_path(key, value) for key, value in out.items()}
    if out["mode"] is None:  # the metric's own direction
        out["mode"] = natural_mode(out["metric"])
    why = metric_mode_problem(out["metric"], out["mode"]) or (combination_problem(out) or (None,))[0]
    if why:
        raise ConfigError(why)
    return out


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but `1e-4` is a float (plain YAML 1.1 reads it as a string) and a key given twice in
    one mapping is an error (PyYAML keeps the last value: `lr: 0.1` ... `lr: 0.001` silently trained at 0.001)."""

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in lines:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key_node.value!r} is given twice (lines {lines[key]} and "
                        f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
                lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text):
    """YAML as a config file or a search space means it: safe, and 1e-4 is a number."""
    return yaml.load(text, Loader=_Loader)


def yaml_problem(err):
    """A YAML error in one line: 'line 2, column 13: mapping values are not allowed here'."""
    mark = getattr(err, "problem_mark", None)
    words = "; ".join(w for w in (getattr(err, "context", None), getattr(err, "problem", None)) if w)
    return f"line {mark.line + 1}, column {mark.column + 1}: {words}" if mark and words else " ".join(str(err).split())


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
    """['lr=1e-3', 'model=cnn'] -> {'lr': 0.001, 'model': 'cnn'}; each key known and each value allowed."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set lr=3e-4")
        key, text = key.strip(), value
        value = parse_value(text)
        if value is None and key in SCHEMA and SCHEMA[key].type is str:  # weights=none: the word, not null
            value = text.strip()
        check_value(key, value)
        out[key] = value
    return out
