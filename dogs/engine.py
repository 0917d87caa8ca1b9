"""One epoch loop for every caller: the Ray trainable, `python -m dogs.train` and `tune.best --retrain`.

`fit` sets a run up (data, model, optimizer) and yields once per epoch; `train_one_epoch` and `evaluate`
are the two functions it calls, in the manner of torchvision's references/classification.
"""
import logging
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import cache, checkpoint, data, features, models
from .batches import Batches, feature_preparer, image_preparer
from .config import resolve
from .errors import CheckpointError

log = logging.getLogger("dogs")


def default_device():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def amp_dtype(config, device):
    """The autocast dtype of config precision (auto | bf16 | fp32, as dogs.config allows); None = fp32."""
    precision = config["precision"]
    if precision == "auto":  # bf16 where the device has it
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": torch.bfloat16, "fp32": None}[precision]


def seed_everything(seed):
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


@dataclass
class Split:
    """One labeled split, decoded: cached images plus labels, restricted to readable files."""
    images: cache.CachedImages
    labels: np.ndarray
    index: np.ndarray  # rows of images.images that decoded


def load_split(root, split, config):
    classes, files, labels = data.labeled_split(root, split)
    images = cache.cached_images(files, config["image_size"], config["cache_dir"] or data.default_cache_dir())
    labels, reasons = np.asarray(labels), {row: f"{f} ({e})" for row, f, e in images.bad}
    # a class whose every file is unreadable would train as a class with 0 images
    for label, name in enumerate(classes):
        rows = np.flatnonzero(labels == label)
        if not images.ok[rows].any():
            raise data.DataError(f"{root / split / name}: none of the {len(rows)} image(s) of class {name!r} "
                                 f"could be read (e.g. {reasons[rows[0]]}); fix or remove the folder")
    return classes, Split(images, labels, np.flatnonzero(images.ok))


def load_splits(config, log_fn=print):
    """(root, classes, train Split, validation Split) for the config's data (or the demo)."""
    root, is_demo = data.resolve_root(config["data"], config["cache_dir"])
    if is_demo:
        log_fn(f"no data folder given: using the built-in demo, scikit-learn's handwritten digits, at {root}")
    classes, train = load_split(root, data.TRAIN, config)
    val_classes, val = load_split(root, data.VALIDATION, config)
    data.check_same_classes(classes, val_classes, root)
    return root, classes, train, val


def use_feature_cache(config, model):
    return config["feature_cache"] and not config["augment"] and len(model.frozen) > 0


def feature_cache_key(config, files, device=None):
    """The frozen-feature cache key a run of `config` on `files` uses: builds the model, decodes nothing.

    The prefix is built as Run builds it (seeded, pretrained weights loaded), in a forked RNG.
    """
    config, device = resolve(config), device or default_device()
    with torch.random.fork_rng(devices=[]):
        if config["seed"] is not None:
            torch.manual_seed(config["seed"])
        model = models.build_model(config, num_classes=2)
    if config["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    mean, std = models.normalization(config)
    return features.feature_key(cache.image_cache_key(config, files), model.frozen, mean, std,
                                amp_dtype(config, device), device, config["channels_last"])


def make_batches(split, model, config, device, amp, train, prefix=None):
    """Batches of a split: cached frozen features when they apply, else images normalized on the device.

    `prefix`: features.prefix_hash(model.frozen), when the caller has it already.
    """
    mean, std = models.normalization(config)
    seed = config["seed"]
    if use_feature_cache(config, model):
        cache_dir = config["cache_dir"] or data.default_cache_dir()
        array, key = features.frozen_features(model, split.images, mean, std, device, amp, config["channels_last"],
                                              cache_dir, prefix)
        return Batches(array, split.labels, split.index, config["batch_size"], device,
                       feature_preparer(device, config["channels_last"]), shuffle=train, seed=seed, key=key)
    images = image_preparer(mean, std, device, augment=train and config["augment"],
                            channels_last=config["channels_last"])
    return Batches(split.images.images, split.labels, split.index, config["batch_size"], device, images,
                   shuffle=train, seed=seed, key=split.images.key)


def train_one_epoch(model, forward, optimizer, loss_fn, batches, amp):
    """One pass over the training batches; returns (mean loss, accuracy, images, seconds)."""
    model.train()
    start = time.perf_counter()
    total_loss = torch.zeros((), device=batches.device)
    correct = torch.zeros((), device=batches.device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        # forward in bf16 autocast where the device has it
        with torch.autocast(batches.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = forward(x)
            loss = loss_fn(logits, y)
        # backward and step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # accumulate on the device: no host sync inside the loop
        total_loss += loss.detach().float() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    loss, acc = total_loss.item() / seen, correct.item() / seen
    return loss, acc, seen, time.perf_counter() - start


@torch.no_grad()
def evaluate(model, forward, loss_fn, batches, amp):
    """(mean loss, accuracy) over the batches, in eval mode."""
    model.eval()
    total_loss = torch.zeros((), device=batches.device)
    correct = torch.zeros((), device=batches.device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        with torch.autocast(batches.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = forward(x)
        total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return total_loss.item() / seen, correct.item() / seen


class Run:
    """Everything one training run holds; `state()` is its checkpoint payload (state_dicts only)."""

    def __init__(self, config, device=None, resume=None, train_on_val=False, log_fn=print):
        self.config = config = resolve(config)
        self.device = device = device or default_device()
        seed_everything(config["seed"])
        # data: decoded once into the node's cache
        self.root, self.classes, train, val = load_splits(config, log_fn)
        if resume is not None:  # continuing another run's checkpoint would mix the two runs
            diffs = checkpoint.differences(resume, config, self.classes, self.root)
            if diffs:
                raise CheckpointError(f"the checkpoint is from another run: {'; '.join(diffs)} differ")
        if train_on_val:  # final retrain: Validation joins the training set
            train = concat_splits(train, val)
        # model: a checkpoint fills every weight it holds; pretrained weights only where it holds none (a
        # fresh run) or not the frozen prefix's (it holds the prefix's hash: checked)
        frozen = resume.get("frozen") if resume is not None else None
        self.model = models.build_model(config, len(self.classes),
                                        load_weights=resume is None or frozen is not None).to(device)
        if resume is not None:
            if frozen is not None:
                checkpoint.check_frozen(self.model, frozen, "the checkpoint")
            checkpoint.load_weights(self.model, resume["model"], frozen)
        self.frozen = checkpoint.frozen_identity(config, self.model)  # what a checkpoint holds instead of the prefix
        self.amp = amp_dtype(config, device)
        # inputs: cached frozen features feed the tail; otherwise images feed the whole net
        self.cached = use_feature_cache(config, self.model)
        self.forward = self.model.tail if self.cached else self.model
        if config["channels_last"]:  # what runs each epoch (a cached prefix is converted only if it must run)
            self.forward.to(memory_format=torch.channels_last)
        if config["compile"]:
            self.forward = torch.compile(self.forward)
        # the prefix hashed once, for both splits' feature cache keys
        prefix = self.frozen["hash"] if self.frozen else None
        self.train_batches = make_batches(train, self.model, config, device, self.amp, train=True, prefix=prefix)
        self.val_batches = make_batches(val, self.model, config, device, self.amp, train=False, prefix=prefix)
        # optimizer: Adam, head at lr, unfrozen stages at backbone_lr
        self.optimizer = torch.optim.Adam(models.param_groups(self.model, config), weight_decay=config["weight_decay"])
        if resume is not None:
            self.optimizer.load_state_dict(resume["optimizer"])
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
        self.epoch = resume["epoch"] if resume else 0
        # "best" = the best value of config metric over the epochs, by config mode (a resumed run keeps its best)
        self.metric, self.mode = config["metric"], config["mode"]
        self.metrics = resume["metrics"] if resume else {}
        self.best = self.metrics.get(f"best_{self.metric}")
        self.best_epoch = self.metrics.get("best_epoch") if self.best is not None else None
        self.improved = False  # whether the last epoch is the best so far

    def epochs(self):
        """Train the remaining epochs; yields the metrics of each (the caller checkpoints and reports)."""
        while self.epoch < self.config["epochs"]:
            self.epoch += 1
            # shuffle, dropout and augmentation draw from (seed, epoch): a resumed run repeats a straight one
            self.train_batches.set_epoch(self.epoch)
            if self.config["seed"] is not None:
                torch.manual_seed(self.config["seed"] * 100_003 + self.epoch)
            train_loss, train_acc, seen, seconds = train_one_epoch(
                self.model, self.forward, self.optimizer, self.loss_fn, self.train_batches, self.amp)
            val_loss, val_acc = evaluate(self.model, self.forward, self.loss_fn, self.val_batches, self.amp)
            scores = {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc}
            # the best epoch by metric and mode; a tie goes to the later epoch, as Ray's checkpoint keeping does
            self.improved = is_better(scores[self.metric], self.best, self.mode)
            if self.improved:
                self.best, self.best_epoch = scores[self.metric], self.epoch
            self.metrics = {
                "epoch": self.epoch, **scores, f"best_{self.metric}": self.best, "best_epoch": self.best_epoch,
                "epoch_time_s": seconds, "images_per_s": seen / seconds,
            }
            yield self.metrics

    def state(self):
        return {"model": checkpoint.trained_weights(self.model, self.frozen), "frozen": self.frozen,
                "optimizer": self.optimizer.state_dict(), "config": self.config,
                "classes": self.classes, "root": str(self.root), "epoch": self.epoch, "metrics": self.metrics}


def is_better(value, best, mode):
    """Whether `value` is at least as good as `best` by `mode` ("max" | "min"); anything beats no best or NaN."""
    if best is None or best != best:
        return True
    return value >= best if mode == "max" else value <= best


def concat_splits(a, b):
    """Train + Validation as one split (for the final retrain)."""
    images = cache.CachedImages(f"{a.images.key}+{b.images.key}", np.concatenate([a.images.images, b.images.images]),
                                a.images.bad + [[row + len(a.images.images), f, e] for row, f, e in b.images.bad])
    return Split(images, np.concatenate([a.labels, b.labels]),
                 np.concatenate([a.index, b.index + len(a.images.images)]))
