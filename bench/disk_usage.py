"""Disk use of a search: bytes per trial after many short trials, and that it stays bounded.

    python bench/disk_usage.py                   # 30 trials x up to 4 epochs of the small CNN, local Ray
    python bench/disk_usage.py --trials 60       # twice as many: bytes per trial should not grow
    python bench/disk_usage.py --data DIR        # on your ImageFolder instead of a generated tiny one

Each trial reports and checkpoints every epoch, but the search keeps at most two checkpoints per trial
(its best by the metric, and its latest). The experiment folder then grows with trials x (2 checkpoints +
logs), not with trials x epochs. This runs the real `python -m tune.search` and measures the folder:
checkpoints, per-trial logs (result.json, progress.csv, TensorBoard events) and the experiment-level files
(experiment state, Optuna state, trials.csv), and what keeping every epoch's checkpoint would have cost.

The data is a generated 3-class ImageFolder of 32 px images (the size of a checkpoint does not depend on the
data, only on the model). 2 CPU cores, no GPU, Ray 2.60: docs/cluster.md has the numbers.
"""
# ----------------------------------------------------------------------------- setup
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SPACE = """
search:
  epochs: {epochs}
  grace_period: 1          # ASHA may stop a trial after 1 epoch (on this easy data it rarely does)
  reduction_factor: 2
  seed: 0
  cpus_per_trial: 1
params:
  model: cnn
  image_size: 32
  weights: none
  normalize: half
  batch_size: 64
  head_width: 64
  lr: {{loguniform: [1.0e-4, 1.0e-2]}}
"""


def make_imagefolder(root, per_class=(20, 8), size=32, seed=0):
    """Train/ and Validation/ of 3 classes: noise images tinted red, green or blue."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("Train", "Validation"), per_class):
        for c, name in enumerate(("red", "green", "blue")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (size, size, 3))
                pixels[..., c] += 120
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def folder_bytes(path, pattern="**/*"):
    return sum(p.stat().st_size for p in Path(path).glob(pattern) if p.is_file())


# ----------------------------------------------------------------------------- the search
def run_search(storage, data, trials, epochs):
    space = storage / "space.yaml"
    space.write_text(SPACE.format(epochs=epochs))
    cmd = [sys.executable, "-m", "tune.search", "--space", str(space), "--samples", str(trials),
           "--data", str(data), "--storage", str(storage), "--name", "disk"]
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
    start = time.time()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the search failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return storage / "disk", time.time() - start


# ----------------------------------------------------------------------------- measuring
def measure(exp_dir):
    trials = sorted(p for p in exp_dir.glob("trial_*") if p.is_dir())
    checkpoints = [list(t.glob("checkpoint_*")) for t in trials]
    epochs_run = [len((t / "result.json").read_text().splitlines()) for t in trials]
    ckpt_bytes = sum(folder_bytes(c) for cs in checkpoints for c in cs)
    one_ckpt = max(folder_bytes(c) for cs in checkpoints for c in cs)
    total = folder_bytes(exp_dir)
    trial_bytes = sum(folder_bytes(t) for t in trials)
    return {
        "trials": len(trials),
        "epochs_run": sum(epochs_run),
        "checkpoints_kept_max_per_trial": max(map(len, checkpoints)),
        "checkpoints_kept": sum(map(len, checkpoints)),
        "checkpoint_bytes": one_ckpt,
        "experiment_bytes": total,
        "bytes_per_trial": round(total / len(trials)),
        "checkpoints_bytes": ckpt_bytes,
        "trial_logs_bytes": trial_bytes - ckpt_bytes,
        "experiment_files_bytes": total - trial_bytes,   # experiment/Optuna state, tuner.pkl, trials.csv
        "every_epoch_kept_bytes": total - ckpt_bytes + sum(epochs_run) * one_ckpt,
    }


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--data", help="ImageFolder root (default: a generated tiny one)")
    p.add_argument("--storage", help="where the experiment goes (default: a temporary folder, removed after)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="disk-") as tmp:
        storage = Path(args.storage or tmp).resolve()
        storage.mkdir(parents=True, exist_ok=True)
        data = Path(args.data) if args.data else make_imagefolder(Path(tmp) / "data")
        exp_dir, wall_s = run_search(storage, data, args.trials, args.epochs)
        m = measure(exp_dir)
    m["wall_s"] = round(wall_s, 1)
    print(f"{m['trials']} trials, {m['epochs_run']} epochs reported, {wall_s:.0f} s")
    print(f"  checkpoints kept   {m['checkpoints_kept']} (at most {m['checkpoints_kept_max_per_trial']} per trial), "
          f"{m['checkpoint_bytes'] / 1e6:.2f} MB each")
    print(f"  experiment folder  {m['experiment_bytes'] / 1e6:.2f} MB = {m['bytes_per_trial'] / 1e6:.3f} MB per trial")
    print(f"    checkpoints {m['checkpoints_bytes'] / 1e6:.2f} MB, trial logs {m['trial_logs_bytes'] / 1e6:.2f} MB, "
          f"experiment files {m['experiment_files_bytes'] / 1e6:.2f} MB")
    print(f"  keeping every epoch's checkpoint would take {m['every_epoch_kept_bytes'] / 1e6:.2f} MB")
    print(json.dumps(m))


if __name__ == "__main__":
    main()
