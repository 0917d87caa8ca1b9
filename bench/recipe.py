"""What each recipe knob does on the demo (accuracy, CPU epoch time), what each backbone costs, and whether
the trainable got slower for configs that use none of the new knobs (this tree against an older commit).

    python bench/recipe.py knobs --epochs 6   # the CNN from scratch on the digits demo, 8 px, each knob alone
    python bench/recipe.py backbones  # every registry backbone, random weights, 32 px: feature pass and epochs
    python bench/recipe.py speed --before 87a903a   # default-knob configs, old vs new tree, interleaved

Needs torch, torchvision, numpy, pandas (no Ray). No pretrained weights are needed (random init: the
accuracy of a random backbone says nothing, so the backbone table is time only).
"""
# ----------------------------------------------------------------------------- setup
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dogs import engine  # noqa: E402
from dogs.backbones import BACKBONES, STAGES  # noqa: E402

CPU = torch.device("cpu")
QUIET = {"log_fn": lambda m: None}


def hardware():
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"load average {load:.1f} at start")


def table(rows):
    frame = pd.DataFrame(rows)
    try:
        return frame.to_markdown(index=False, floatfmt=",.3f")
    except ImportError:
        return frame.to_string(index=False)


# ----------------------------------------------------------------------------- knobs
KNOBS = {  # name -> config overrides of the CNN baseline (Adam 3e-3, constant, crop/flip off)
    "baseline: adam, constant lr": {},
    "optimizer adamw, weight_decay 0.05": {"optimizer": "adamw", "weight_decay": 0.05},
    "optimizer sgd (nesterov), lr 0.05": {"optimizer": "sgd", "lr": 0.05},
    "schedule cosine, warmup 1": {"schedule": "cosine", "warmup_epochs": 1},
    "schedule onecycle, warmup 1": {"schedule": "onecycle", "warmup_epochs": 1},
    "label_smoothing 0.1": {"label_smoothing": 0.1},
    "mixup 0.2": {"mixup": 0.2},
    "cutmix 1.0": {"cutmix": 1.0},
    "ema 0.99": {"ema": 0.99},
    "augment (crop + flip)": {"augment": True},
    "adamw + cosine + smoothing + mixup + ema": {"optimizer": "adamw", "weight_decay": 0.05, "schedule": "cosine",
                                                 "warmup_epochs": 1, "label_smoothing": 0.1, "mixup": 0.2,
                                                 "ema": 0.99},
}


def knobs(args):
    base = {"model": "cnn", "image_size": args.size, "batch_size": 32, "epochs": args.epochs, "lr": 3e-3}
    rows = []
    for name, overrides in KNOBS.items():
        results = []
        for seed in range(args.seeds):
            history = list(engine.Run({**base, **overrides, "seed": seed}, device=CPU, **QUIET).epochs())
            results.append(history)
        last = [h[-1] for h in results]
        rows.append({
            "knob": name,
            "best val_acc": statistics.mean(max(m["val_acc"] for m in h) for h in results),
            "last val_acc": statistics.mean(m["val_acc"] for m in last),
            "last val_macro_f1": statistics.mean(m["val_macro_f1"] for m in last),
            "last train_loss": statistics.mean(m["train_loss"] for m in last),
            "epoch s (median)": statistics.median(m["epoch_time_s"] for h in results for m in h[1:]),
        })
        print(f"  {name}: best val_acc {rows[-1]['best val_acc']:.4f}", flush=True)
    print(f"\nthe CNN on the digits demo (1,257 train / 269 validation images), {args.size} px, batch 32, {args.epochs} "
          f"epochs, mean of seeds 0..{args.seeds - 1}\n")
    print(table(rows))


# ----------------------------------------------------------------------------- backbones
def backbones(args):
    rows = []
    for name, entry in BACKBONES.items():
        if entry.builder is None:
            continue
        base = {"model": name, "weights": "none", "image_size": 32, "batch_size": 64, "epochs": 2, "seed": 0}
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            frozen = engine.Run({**base, "cache_dir": cache}, device=CPU, **QUIET)  # one-off: the feature pass
            feature_pass = time.perf_counter() - start
            head = list(frozen.epochs())
        full = list(engine.Run({**base, "unfreeze": STAGES[name]}, device=CPU, **QUIET).epochs())
        rows.append({"model": name, "stages": STAGES[name], "features": entry.features,
                     "frozen: feature pass s": feature_pass, "frozen: head epoch s": head[-1]["epoch_time_s"],
                     "full fine-tune img/s": full[-1]["images_per_s"]})
        print(f"  {name}: full fine-tune {rows[-1]['full fine-tune img/s']:.0f} img/s", flush=True)
    print("\nrandom weights, the digits demo at 32 px (1,257 train images), batch 64, fp32, channels_last; "
          "the second epoch\n")
    print(table(rows))


# ----------------------------------------------------------------------------- speed: old tree vs this one
SPEED_CONFIGS = {  # configs using none of the new knobs (defaults: adam, constant, no mixup/cutmix/ema)
    "frozen resnet18 + head (cached features)": {"model": "resnet18", "unfreeze": 0, "image_size": 64},
    "resnet18, last stage unfrozen": {"model": "resnet18", "unfreeze": 1, "image_size": 32},
    "from-scratch CNN": {"model": "cnn", "image_size": 32},
}
TIMER = """
import json, statistics, sys, tempfile, torch
from dogs import engine
config = json.loads(sys.argv[1])
with tempfile.TemporaryDirectory() as cache:
    run = engine.Run({**config, "cache_dir": cache}, device=torch.device("cpu"), log_fn=lambda m: None)
    speeds = [m["images_per_s"] for m in run.epochs()][1:]
print(json.dumps(statistics.median(speeds)))
"""


def speed(args):
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        trees = {f"before ({args.before})": old, "after (this tree)": ROOT}
        rows = []
        for name, overrides in SPEED_CONFIGS.items():
            config = {**overrides, "weights": "none", "batch_size": 64, "epochs": args.epochs, "seed": 0}
            speeds = {tree: [] for tree in trees}
            for _ in range(args.repeats):  # interleaved, so that a change of machine load hits both alike
                for tree, path in trees.items():
                    out = subprocess.run([sys.executable, "-c", TIMER, json.dumps(config)], check=True, text=True,
                                         capture_output=True, cwd=path, env={**os.environ, "PYTHONPATH": str(path)})
                    speeds[tree].append(json.loads(out.stdout.strip().splitlines()[-1]))
            before, after = (statistics.median(v) for v in speeds.values())
            rows.append({"config": name, **{f"{t} img/s": statistics.median(v) for t, v in speeds.items()},
                         "after / before": after / before,
                         "runs (img/s)": "; ".join(", ".join(f"{s:.0f}" for s in v) for v in speeds.values())})
            print(f"  {name}: {before:.0f} -> {after:.0f} img/s", flush=True)
    print(f"\nthe digits demo, random weights, batch 64, median over epochs 2..{args.epochs} of each run, then over "
          f"{args.repeats} interleaved runs per tree\n")
    print(table(rows))


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["knobs", "backbones", "speed"])
    p.add_argument("--epochs", type=int, default=10, help="epochs per run (knobs: 10; speed: use 4)")
    p.add_argument("--seeds", type=int, default=2, help="knobs: seeds averaged per knob")
    p.add_argument("--size", type=int, default=8, help="knobs: image size (the digits are 8 x 8)")
    p.add_argument("--before", default="87a903a", help="speed: the commit to compare with")
    p.add_argument("--repeats", type=int, default=3, help="speed: interleaved runs per tree")
    args = p.parse_args()
    print(f"# bench/recipe.py {' '.join(sys.argv[1:])}\n# {time.strftime('%Y-%m-%d %H:%M')}  {hardware()}")
    start = time.perf_counter()
    {"knobs": knobs, "backbones": backbones, "speed": speed}[args.part](args)
    print(f"\n# {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
