"""One epoch loop for every caller: the Ray trainable, `python -m dogs.train` and `tune.best --retrain`.

`Run` sets a run up (data, model, optimizer) and `Run.epochs` yields once per epoch; `train_one_epoch` and
`evaluate` are the two functions it calls, in the manner of torchvision's references/classification.
"""
import logging
import math
import random
import time

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

from . import checkpoint, data, features, models, ranking, uncertainty
from .batches import Batches, feature_preparer, image_preparer
from .cache import cache_root
from .config import feature_cache_applies, resolve
from .device import amp_dtype, default_device
from .errors import CheckpointError
from .splits import concat_splits, holdout_splits, load_splits

log = logging.getLogger("dogs")


def seed_everything(seed):
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def use_feature_cache(config, model):
    return feature_cache_applies(config) and len(model.frozen) > 0


def make_batches(split, model, config, device, amp, train, prefix=None):
    """Batches of a split: cached frozen features when they apply, else images normalized on the device.

    `prefix`: features.prefix_hash(model.frozen), when the caller has it already.
    """
    mean, std = models.normalization(config)
    seed = config["seed"]
    if use_feature_cache(config, model):
        array, key = features.frozen_features(model, split.images, mean, std, device, amp, config["channels_last"],
                                              cache_root(config["cache_dir"]), prefix)
        return Batches(array, split.labels, split.index, config["batch_size"], device,
                       feature_preparer(device, config["channels_last"]), shuffle=train, seed=seed, key=key)
    images = image_preparer(mean, std, device, augment=train and config["augment"],
                            channels_last=config["channels_last"])
    return Batches(split.images.images, split.labels, split.index, config["batch_size"], device, images,
                   shuffle=train, seed=seed, key=split.images.key)


# --- the recipe: optimizer, schedule, mixup/cutmix, EMA ---

OPTIMIZERS = {  # name -> optimizer over parameter groups (each group has its own lr)
    "adam": lambda groups, wd: torch.optim.Adam(groups, weight_decay=wd),
    "adamw": lambda groups, wd: torch.optim.AdamW(groups, weight_decay=wd),
    "sgd": lambda groups, wd: torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=wd),
}
WARMUP_START = 0.01  # the warm-up starts at 1% of each group's learning rate (torchvision's reference default)


def make_schedule(optimizer, config, steps_per_epoch):
    """The per-step learning-rate schedule of config schedule/warmup_epochs; None = constant, no warm-up."""
    total, warm = config["epochs"] * steps_per_epoch, config["warmup_epochs"] * steps_per_epoch
    if config["schedule"] == "onecycle":  # rises for the warm-up, then anneals (torch's one-cycle policy)
        return lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                       total_steps=total, pct_start=warm / total)
    if config["schedule"] == "constant" and warm == 0:
        return None
    after = (lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warm) if config["schedule"] == "cosine"
             else lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0))
    if warm == 0:
        return after
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START, total_iters=warm)
    return lr_scheduler.SequentialLR(optimizer, [warmup, after], milestones=[warm])


class Mixer:
    """Mixup / cutmix of a batch on the device, one mixing per batch (torchvision's v2.MixUp and v2.CutMix).

    Cutmix pastes boxes of images, before the frozen prefix; mixup mixes what the trained part reads (the
    frozen prefix's output, which is the images when nothing is frozen), so cached and uncached features
    train alike. With both on, each batch uses one of them. Returns (the tail's input, soft targets).
    """

    def __init__(self, config, num_classes, prefix):
        self.mixup = v2.MixUp(alpha=config["mixup"], num_classes=num_classes) if config["mixup"] else None
        self.cutmix = v2.CutMix(alpha=config["cutmix"], num_classes=num_classes) if config["cutmix"] else None
        self.prefix = prefix  # the frozen prefix, or None when the inputs are its cached output

    def __call__(self, x, y):
        # which mixing this batch gets: a draw of torch's CPU generator (seeded per epoch), no device sync
        cut = self.cutmix is not None and (self.mixup is None or bool(torch.rand(()) < 0.5))
        if cut:
            x, target = self.cutmix(x, y)
        if self.prefix is not None:
            with torch.no_grad():
                x = self.prefix(x)
        if not cut:
            flat = x.reshape(len(x), -1, 1, 1) if x.dim() != 4 else x  # MixUp takes (B, C, H, W)
            mixed, target = self.mixup(flat, y)
            x = mixed.reshape(x.shape)
        return x, target


def train_one_epoch(model, forward, optimizer, loss_fn, batches, amp, scheduler=None, ema=None, mix=None):
    """One pass over the training batches; returns (mean loss, accuracy, images, seconds).

    `forward` maps a batch to logits; with `mix` (a Mixer) it is the trained tail and `mix` makes its input.
    The schedule steps and the EMA (of model.tail) updates after every optimizer step.
    """
    model.train()
    start = time.perf_counter()
    total_loss = torch.zeros((), device=batches.device)
    correct = torch.zeros((), device=batches.device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        # forward in bf16 autocast where the device has it; mixup/cutmix make soft targets
        with torch.autocast(batches.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            x, target = mix(x, y) if mix is not None else (x, y)
            logits = forward(x)
            loss = loss_fn(logits, target)
        # backward and step; then the schedule and the weights' moving average
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model.tail)
        # accumulate on the device: no host sync inside the loop (accuracy against the unmixed labels)
        total_loss += loss.detach().float() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    loss, acc = total_loss.item() / seen, correct.item() / seen
    return loss, acc, seen, time.perf_counter() - start


@torch.no_grad()
def evaluate(model, forward, loss_fn, batches, amp):
    """{"loss", "acc", "top5", "macro_f1", "confusion", "labels", "predictions"} over the batches, in eval mode.

    The confusion matrix (rows: true class, columns: predicted) is accumulated on the device; one host
    copy at the end. top5 = the true class among the 5 highest logits; macro_f1 = the mean F1 over the
    classes that occur (as truth or prediction), as sklearn's f1_score(average="macro") computes it.
    """
    model.eval()
    total_loss = torch.zeros((), device=batches.device)
    top5 = torch.zeros((), device=batches.device, dtype=torch.long)
    confusion, seen, labels, predictions = None, 0, [], []
    for x, y in batches:
        with torch.autocast(batches.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = forward(x)
        classes = logits.shape[1]
        if confusion is None:
            confusion = torch.zeros(classes * classes, device=batches.device, dtype=torch.long)
        predicted = logits.argmax(1)
        total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        confusion.index_add_(0, y * classes + predicted, torch.ones_like(y))
        labels.append(y)
        predictions.append(predicted)
        top5 += (logits.topk(min(5, classes), dim=1).indices == y[:, None]).any(1).sum()
        seen += len(y)
    confusion = confusion.view(classes, classes).cpu().numpy()
    return {"loss": total_loss.item() / seen, "acc": float(np.trace(confusion)) / seen, "top5": top5.item() / seen,
            "macro_f1": macro_f1(confusion), "confusion": confusion,
            "labels": torch.cat(labels).cpu().numpy(), "predictions": torch.cat(predictions).cpu().numpy()}


def confusion_of(labels, predictions, classes):
    """The confusion matrix (rows: truth, columns: prediction) of label and prediction arrays."""
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def macro_f1_interval(labels, predictions, classes):
    """The bootstrap 95% interval of macro-F1 over these validation predictions (dogs.uncertainty)."""
    return uncertainty.bootstrap(lambda rows: macro_f1(confusion_of(labels[rows], predictions[rows], classes)),
                                 len(labels))


def macro_f1(confusion):
    """Mean F1 over the classes present as truth or as prediction (rows: truth, columns: prediction)."""
    tp = np.diag(confusion).astype(float)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    present = (tp + fp + fn) > 0
    return float(np.mean(2 * tp[present] / (2 * tp[present] + fp[present] + fn[present]))) if present.any() else 0.0


def make_recipe(model, config, num_classes, steps_per_epoch, cached):
    """(optimizer, schedule, EMA, mixer) of a run; the last three None when off.

    The optimizer trains the head at lr and the unfrozen stages at backbone_lr; the EMA averages the tail's weights
    (BatchNorm statistics too); mixup/cutmix make the tail's input (cutmix before the frozen prefix, mixup after it).
    """
    optimizer = OPTIMIZERS[config["optimizer"]](models.param_groups(model, config), config["weight_decay"])
    schedule = make_schedule(optimizer, config, steps_per_epoch)
    ema = None
    if config["ema"]:
        ema = AveragedModel(model.tail, multi_avg_fn=get_ema_multi_avg_fn(config["ema"]), use_buffers=True)
    mix = None
    if config["mixup"] or config["cutmix"]:
        mix = Mixer(config, num_classes, prefix=None if cached else model.frozen)
    return optimizer, schedule, ema, mix


class Run:
    """One training run: `model` is trained, `eval_model` is evaluated and saved (the EMA average, or `model`).

    `state()` is its checkpoint payload (state_dicts only); `load_state()` continues one.
    """

    def __init__(self, config, device=None, resume=None, train_on_val=False, log_fn=print):
        self.config = config = resolve(config)
        self.device = device = device or default_device()
        seed_everything(config["seed"])
        # data: decoded once into the node's cache
        self.root, self.classes, train, val = load_splits(config, log_fn)
        data.check_metric(config["metric"], self.classes, self.root)
        if resume is not None:  # continuing another run's checkpoint would mix the two runs
            why = checkpoint.resume_problem(resume, config, self.classes, self.root)
            if why:
                raise CheckpointError(why)
        if train_on_val:  # final retrain: Validation (all of it) joins the training set
            train = concat_splits(train, val)
        # the held-out part of Validation: scored apart (holdout_*), never in the val_* scores that rank runs
        held = None
        if config["holdout"] and not train_on_val:
            val, held = holdout_splits(val, config["holdout"], self.classes)
        # model: pretrained weights unless a checkpoint holds them all (it holds no frozen prefix's identity)
        self.model = models.build_model(config, len(self.classes),
                                        load_weights=resume is None or resume.get("frozen") is not None).to(device)
        self.amp = amp_dtype(config, device)
        # inputs: cached frozen features feed the tail; otherwise images feed the whole net
        self.cached = use_feature_cache(config, self.model)
        if config["channels_last"]:  # what runs each epoch (a cached prefix is converted only if it must run)
            (self.model.tail if self.cached else self.model).to(memory_format=torch.channels_last)
        steps = math.ceil(len(train.index) / config["batch_size"])  # len(self.train_batches), built below
        self.optimizer, self.scheduler, self.ema, self.mix = make_recipe(
            self.model, config, len(self.classes), steps, self.cached)
        self.eval_model = self.model if self.ema is None else models.Net(self.model.frozen, self.ema.module)
        # what a training batch runs through: the tail when cached features or the mixer feed it, else the net
        self.trained = self.model.tail if self.cached or self.mix is not None else self.model
        if config["compile"]:
            self.trained = torch.compile(self.trained)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
        self.epoch, self.metrics = 0, {}
        if resume is not None:
            self.load_state(resume)
        # batches (after the weights: a checkpoint may hold the prefix); the prefix hashed once for both splits
        self.frozen = checkpoint.frozen_identity(config, self.model)  # what a checkpoint holds instead of the prefix
        prefix = self.frozen["hash"] if self.frozen else None
        self.train_batches = make_batches(train, self.model, config, device, self.amp, train=True, prefix=prefix)
        self.val_batches = make_batches(val, self.model, config, device, self.amp, train=False, prefix=prefix)
        self.held_batches = None if held is None else make_batches(held, self.model, config, device, self.amp,
                                                                     train=False, prefix=prefix)
        self.confusion = None  # the last epoch's validation confusion matrix (rows: truth)
        # "best" = the best value of config metric over the epochs, by config mode (a resumed run keeps its best)
        self.metric, self.mode = config["metric"], config["mode"]
        self.best = self.metrics.get(f"best_{self.metric}")
        self.best_epoch = self.metrics.get("best_epoch") if self.best is not None else None
        self.improved = False  # whether the last epoch is the best so far

    def evaluated(self):
        """What a validation batch runs through: what trains, unless another module is evaluated (the EMA average)
        or the mixer feeds training the tail; then the evaluated net (its tail when cached features feed it)."""
        if self.ema is None and self.mix is None:
            return self.trained
        return self.eval_model.tail if self.cached else self.eval_model

    def epochs(self):
        """Train the remaining epochs; yields the metrics of each (the caller checkpoints and reports)."""
        while self.epoch < self.config["epochs"]:
            self.epoch += 1
            # shuffle, dropout and augmentation draw from (seed, epoch): a resumed run repeats a straight one
            self.train_batches.set_epoch(self.epoch)
            if self.config["seed"] is not None:
                torch.manual_seed(self.config["seed"] * 100_003 + self.epoch)
            train_loss, train_acc, seen, seconds = train_one_epoch(
                self.model, self.trained, self.optimizer, self.loss_fn, self.train_batches, self.amp,
                self.scheduler, self.ema, self.mix)
            val = evaluate(self.eval_model, self.evaluated(), self.loss_fn, self.val_batches, self.amp)
            self.confusion = val.pop("confusion")
            labels, predictions = val.pop("labels"), val.pop("predictions")
            scores = {"train_loss": train_loss, "train_acc": train_acc, **{f"val_{k}": v for k, v in val.items()}}
            if self.held_batches is not None:   # the held-out part: reported, never what ranks epochs or runs
                held = evaluate(self.eval_model, self.evaluated(), self.loss_fn, self.held_batches, self.amp)
                scores.update({f"holdout_{k}": held[k] for k in ("loss", "acc", "top5", "macro_f1")},
                              holdout_images=len(held["labels"]))
            # how sure the scores are: the set sizes (Wilson intervals), macro-F1's bootstrap when it ranks
            intervals = {"train_images": seen, "val_images": len(labels)}
            if self.metric == "val_macro_f1":
                intervals["val_macro_f1_low"], intervals["val_macro_f1_high"] = macro_f1_interval(
                    labels, predictions, len(self.classes))
            # the best epoch by metric and mode; a tie goes to the later epoch, as Ray's checkpoint keeping does
            self.improved = ranking.improves(scores[self.metric], self.best, self.mode)
            if self.improved:
                self.best, self.best_epoch = scores[self.metric], self.epoch
            self.metrics = {
                "epoch": self.epoch, **scores, **intervals, f"best_{self.metric}": self.best, "best_epoch": self.best_epoch,
                "epoch_time_s": seconds, "images_per_s": seen / seconds,
            }
            yield self.metrics

    def state(self):
        """The checkpoint: "model" = the weights that are evaluated (the EMA's when on; "live" = the trained ones)."""
        state = {"model": checkpoint.trained_weights(self.eval_model, self.frozen), "frozen": self.frozen,
                 "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                 "config": self.config, "classes": self.classes, "root": str(self.root), "epoch": self.epoch,
                 "metrics": self.metrics}
        if self.ema is not None:
            state.update(live=checkpoint.trained_weights(self.model, self.frozen), ema_updates=int(self.ema.n_averaged))
        return state

    def load_state(self, state):
        """Continue `state` (what state() wrote, for this config): weights, optimizer, schedule, EMA, epoch, metrics.

        A checkpoint that identifies its frozen prefix holds none of its weights: the rebuilt prefix must match it.
        """
        frozen = state.get("frozen")
        if frozen is not None:
            checkpoint.check_frozen(self.model, frozen, "the checkpoint")
        checkpoint.load_weights(self.model, state.get("live") or state["model"], frozen)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            checkpoint.load_weights(self.eval_model, state["model"], frozen)
            self.ema.n_averaged.fill_(state["ema_updates"])
        self.epoch, self.metrics = state["epoch"], state["metrics"]
