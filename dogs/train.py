"""Standalone training, no Ray: `python -m dogs.train [--data DIR] [--config FILE] [--set key=value ...]`.

Prints the notebook's epoch table, keeps the best-validation weights, and writes best.pt, last.pt,
predictions.png and (when the data has Test/) submission.csv into --out.
"""
import copy
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from . import checkpoint, data, interrupt, submission
from .cli import ArgumentParser, fail, quiet_when_reader_leaves
from .config import check_value, load_yaml, parse_sets, resolve, yaml_problem
from .engine import Run
from .errors import CheckpointError, ConfigError, UserError
from .files import atomic_path, is_special, refuse_others

WRITES = ("config.json", "last.pt", "best.pt", "history.csv", *submission.WRITES)   # what run() writes into its folder
HEADER = f"{'epoch':>5} | {'train loss':>10} | {'train acc':>9} | {'valid loss':>10} | {'valid acc':>9} | {'time':>6} | {'img/s':>8}"


def copy_state(state_dict):
    """A real copy of the weights (the notebook kept a reference, so its 'best' weights were the last)."""
    return {k: v.detach().clone() for k, v in state_dict.items()}


def resumed_history(training, out_dir, train_on_val):
    """(history, best weights) of the epochs before an interruption: history.csv up to the resumed epoch; the best
    weights from best.pt (None when Validation is trained on, or there is none)."""
    history_csv, best_weights = out_dir / "history.csv", None
    history = ([row for row in pd.read_csv(history_csv).to_dict("records") if row["epoch"] <= training.epoch]
               if history_csv.exists() else [])
    if not train_on_val and (out_dir / "best.pt").exists():
        best = checkpoint.read(out_dir / "best.pt")
        if best.get("frozen") is not None:   # a checkpoint without the frozen prefix: it must be this run's
            checkpoint.check_frozen(training.model, best["frozen"], out_dir / "best.pt")
        best_weights = copy_state(
            checkpoint.load_weights(copy.deepcopy(training.model), best["model"], best.get("frozen")).state_dict())
    return history, best_weights


def run(config, out_dir, train_on_val=False, resume=False, device=None, log=print):
    """Train one config with the shared epoch loop; returns checkpoint/submission/grid paths and the history.

    best.pt is the best epoch by the config's metric and mode (the last epoch when Validation is trained on).
    history.csv is written every epoch; a resumed run keeps the rows of the epochs before the interruption.
    """
    out_dir = refuse_others(out_dir, WRITES, "--out")   # an earlier run's files may be replaced, nobody else's
    last, history_csv = out_dir / "last.pt", out_dir / "history.csv"
    state = checkpoint.read(last) if resume and last.exists() else None
    if resume and state is None:
        log(f"nothing to resume in {out_dir}: starting from epoch 1")
    try:
        training = Run(config, device=device, resume=state, train_on_val=train_on_val, log_fn=log)
    except CheckpointError as err:
        raise CheckpointError(f"--resume {last}: {err}; or start a new run with another --out") from None
    out_dir.mkdir(parents=True, exist_ok=True)   # only once the run can start: a refused run leaves no folder
    (out_dir / "config.json").write_text(json.dumps(training.config, indent=2))
    log(f"{training.config['model']} on {len(training.classes)} classes, device {training.device}, "
        f"{'cached frozen features' if training.cached else 'images'} -> {out_dir}")
    if train_on_val:
        log("training on Train + Validation: validation scores are not held out; the last epoch is kept")
    metric = training.metric
    history, best_weights = resumed_history(training, out_dir, train_on_val) if state is not None else ([], None)
    log(HEADER)
    for m in training.epochs():
        # log the epoch, checkpoint it and its history, keep a copy of the best weights
        history.append(m)
        log(f"{m['epoch']:>5} | {m['train_loss']:>10.4f} | {m['train_acc']:>9.2%} | {m['val_loss']:>10.4f} | "
            f"{m['val_acc']:>9.2%} | {m['epoch_time_s']:>5.1f}s | {m['images_per_s']:>8.0f}")
        checkpoint.save(training.state(), last)
        with atomic_path(history_csv) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
        if not train_on_val and training.improved:
            best_weights = copy_state(training.eval_model.state_dict())
            checkpoint.save(training.state(), out_dir / "best.pt")
    # restore the best weights (the last ones when Validation was trained on)
    if best_weights is not None:
        training.eval_model.load_state_dict(best_weights)
    else:
        checkpoint.save(training.state(), out_dir / "best.pt")
    written = submission.submit(training.eval_model, training.state(), out_dir, device=training.device)
    if written["submission"] is None:
        log(f"no submission.csv: {data.no_test_images(training.root)}")
    score = demo_test_accuracy(training.root, written["submission"])
    # the epoch best.pt holds: the best one, or the last when Validation was trained on (it cannot pick one then)
    best, best_epoch = ((training.metrics.get(metric), training.epoch) if train_on_val
                        else (training.best, training.best_epoch))
    if best is not None:
        log((f"kept the last epoch {best_epoch}: {metric} {best:.4f} (trained on Validation: not held out)"
             if train_on_val else f"best {metric} {best:.4f} at epoch {best_epoch} ({training.mode})")
            + (f", demo test accuracy {score:.2%}" if score is not None else ""))
    for name, path in written.items():
        if path:
            log(f"{name}: {path}")
    return {"checkpoint": out_dir / "best.pt", f"best_{metric}": best, "best_epoch": best_epoch,
            "history": history, **written}


def demo_test_accuracy(root, submission):
    """Accuracy on the demo's Test/ (its answers sit in test_labels.csv); None for other data sets."""
    answers = Path(root) / "test_labels.csv"
    if submission is None or not answers.exists():
        return None
    merged = pd.read_csv(answers).merge(pd.read_csv(submission), on="Id", suffixes=("", "_predicted"))
    return float((merged["Class"] == merged["Class_predicted"]).mean())


def load_config_file(path):
    """A YAML or JSON file of fixed config values (flat keys of dogs.config), each checked."""
    if is_special(path):   # a FIFO would wait for a writer forever, /dev/zero never ends
        raise ConfigError(f"--config {path}: it is {data.what_it_is(path)}, not a file: give a YAML or JSON file")
    try:
        values = load_yaml(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read it: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of config keys to values, got {type(values).__name__}")
    for key, value in values.items():
        try:
            check_value(key, value)
        except ConfigError as err:
            raise ConfigError(f"--config {path}: {err}") from None
    return values


EXAMPLES = """  python -m dogs.train --set model=cnn epochs=3            # the demo digits (32 px), an epoch in seconds on a CPU
  python -m dogs.train --data data/ --set model=resnet18 lr=3e-4 --out runs/r18
  python -m dogs.train --config runs/NAME/best/config.yaml # the search's best config (tune.best writes it)
  python -m dogs.train --out runs/r18 --resume             # continue an interrupted run"""


def get_args_parser():
    p = ArgumentParser(prog="python -m dogs.train", description=__doc__, examples=EXAMPLES,
                       groups=("data", "config", "resources", "output"))
    data, config, resources, output = p.groups.values()
    data.add_argument("--data", help="ImageFolder root with Train/ Validation/ [Test/]; default: the config's data, "
                                     "else the digits demo (a different data in --config/--set is an error)")
    data.add_argument("--train-on-val", action="store_true", help="train on Train + Validation (final retrain)")
    config.add_argument("--config", help="YAML/JSON file of config values (e.g. tune.best's best/config.yaml)")
    config.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set model=cnn lr=3e-4 (repeatable; keys: see "
                             "dogs/config.py)")
    resources.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    output.add_argument("--out", help="output folder (default: runs/train-<time>)")
    output.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    return p


def data_option(config, data):
    """The config with --data in it; --data and a different data from --config/--set is an error."""
    if data is None:
        return config
    given = config.get("data")
    if given is not None and Path(given).resolve() != Path(data).resolve():
        raise ConfigError(f"--data {data} and data={given} (from --config/--set) differ; give the data folder once")
    return {**config, "data": data}

def resume_command(argv, out):
    """The command line that continues this run: the same arguments, with --out and --resume."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(out)]
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(["python", "-m", "dogs.train", *argv])


@quiet_when_reader_leaves
def main(argv=None):
    import torch
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}"
    interrupt.catch_sigterm(keyboard_interrupt=True)   # SIGTERM (Slurm, Kubernetes, kill) stops as Ctrl-C does
    try:
        # config: file, then --set, then --data; every value checked before anything runs
        config = load_config_file(args.config) if args.config else {}
        config.update(parse_sets(args.set))
        config = data_option(config, args.data)
        if config.get("data") is None:   # the demo: its 8x8 digits need no 224 px (an epoch in seconds on a CPU)
            config.setdefault("image_size", data.DEMO_IMAGE_SIZE)
        config = resolve(config)
        run(config, out, train_on_val=args.train_on_val, resume=args.resume,
            device=torch.device(args.device) if args.device else None)
    except KeyboardInterrupt:
        print(f"dogs-train: interrupted; continue with: {resume_command(argv, out)}", file=sys.stderr)
        raise SystemExit(interrupt.exit_status()) from None
    except UserError as err:
        fail("dogs-train", err)


if __name__ == "__main__":
    sys.exit(main())
