"""Standalone training, no Ray: `python -m dogs.train [--data DIR] [--config FILE] [--set key=value ...]`.

Prints the notebook's epoch table, keeps the best-validation weights, and writes best.pt, last.pt,
predictions.png and (when the data has Test/) submission.csv into --out.
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from . import checkpoint, predict
from .config import check_value, load_yaml, parse_sets, resolve
from .errors import ConfigError, UserError
from .engine import Run

HEADER = f"{'epoch':>5} | {'train loss':>10} | {'train acc':>9} | {'valid loss':>10} | {'valid acc':>9} | {'time':>6} | {'img/s':>8}"


def copy_state(state_dict):
    """A real copy of the weights (the notebook kept a reference, so its 'best' weights were the last)."""
    return {k: v.detach().clone() for k, v in state_dict.items()}


def run(config, out_dir, train_on_val=False, resume=False, device=None, log=print):
    """Train one config with the shared epoch loop; returns checkpoint/submission/grid paths and the history."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last.pt"
    state = checkpoint.read(last) if resume and last.exists() else None
    if resume and state is None:
        log(f"nothing to resume in {out_dir}: starting from epoch 1")
    run = Run(config, device=device, resume=state, train_on_val=train_on_val, log_fn=log)
    (out_dir / "config.json").write_text(json.dumps(run.config, indent=2))
    log(f"{run.config['model']} on {len(run.classes)} classes, device {run.device}, "
        f"{'cached frozen features' if run.cached else 'images'} -> {out_dir}")
    if train_on_val:
        log("training on Train + Validation: validation scores are not held out; the last epoch is kept")
    best_weights, best_acc, history = None, run.best_val_acc, []
    if state is not None and not train_on_val and (out_dir / "best.pt").exists():  # the best so far may be older
        best_weights = checkpoint.read(out_dir / "best.pt")["model"]
    log(HEADER)
    for m in run.epochs():
        # log the epoch, checkpoint it, keep a copy of the best weights
        history.append(m)
        log(f"{m['epoch']:>5} | {m['train_loss']:>10.4f} | {m['train_acc']:>9.2%} | {m['val_loss']:>10.4f} | "
            f"{m['val_acc']:>9.2%} | {m['epoch_time_s']:>5.1f}s | {m['images_per_s']:>8.0f}")
        checkpoint.save(run.state(), last)
        if not train_on_val and m["val_acc"] > best_acc:
            best_acc, best_weights = m["val_acc"], copy_state(run.model.state_dict())
            checkpoint.save(run.state(), out_dir / "best.pt")
    # restore the best-validation weights (the last ones when Validation was trained on)
    if best_weights is not None:
        run.model.load_state_dict(best_weights)
    else:
        checkpoint.save(run.state(), out_dir / "best.pt")
    pd.DataFrame(history).to_csv(out_dir / "history.csv", index=False)
    written = predict.submit(run.model, run.state(), out_dir, device=run.device)
    score = demo_test_accuracy(run.root, written["submission"])
    log(f"best val_acc {run.best_val_acc:.2%}" + (f", demo test accuracy {score:.2%}" if score is not None else ""))
    for name, path in written.items():
        if path:
            log(f"{name}: {path}")
    return {"checkpoint": out_dir / "best.pt", "best_val_acc": run.best_val_acc, "history": history, **written}


def demo_test_accuracy(root, submission):
    """Accuracy on the demo's Test/ (its answers sit in test_labels.csv); None for other data sets."""
    answers = Path(root) / "test_labels.csv"
    if submission is None or not answers.exists():
        return None
    merged = pd.read_csv(answers).merge(pd.read_csv(submission), on="Id", suffixes=("", "_predicted"))
    return float((merged["Class"] == merged["Class_predicted"]).mean())


def load_config_file(path):
    """A YAML or JSON file of fixed config values (flat keys of dogs.config), each checked."""
    try:
        values = load_yaml(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path}: cannot read it: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of config keys to values, got {type(values).__name__}")
    for key, value in values.items():
        try:
            check_value(key, value)
        except ConfigError as err:
            raise ConfigError(f"--config {path}: {err}") from None
    return values


def get_args_parser():
    p = argparse.ArgumentParser(prog="python -m dogs.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="ImageFolder root with Train/ Validation/ [Test/]; default: the config's data, "
                                  "else the digits demo (a different data in --config/--set is an error)")
    p.add_argument("--config", help="YAML/JSON file of config values")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set model=cnn lr=3e-4 (repeatable; keys: see dogs/config.py)")
    p.add_argument("--out", help="output folder (default: runs/train-<time>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--train-on-val", action="store_true", help="train on Train + Validation (final retrain)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    return p


def data_option(config, data):
    """The config with --data in it; --data and a different data from --config/--set is an error."""
    if data is None:
        return config
    given = config.get("data")
    if given is not None and Path(given).resolve() != Path(data).resolve():
        raise ConfigError(f"--data {data} and data={given} (from --config/--set) differ; give the data folder once")
    return {**config, "data": data}


def main(argv=None):
    import torch
    from .data import DataError
    from .models import WeightsError
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        # config: file, then --set, then --data; every value checked before anything runs
        config = load_config_file(args.config) if args.config else {}
        config.update(parse_sets(args.set))
        config = resolve(data_option(config, args.data))
        out = args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}"
        run(config, out, train_on_val=args.train_on_val, resume=args.resume,
            device=torch.device(args.device) if args.device else None)
    except (UserError, DataError, WeightsError, KeyError, ValueError, FileNotFoundError) as err:
        print(f"dogs-train: error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
