"""Does the search earn its keep? Searchers and schedulers side by side on a task that is not saturated.

    python bench/search_quality.py                # 5 seeds x 4 arms x 16 trials x 6 epochs + the budget arm
                                                  # (~25 min on 2 CPU cores; bench/RESULTS.md)
    python bench/search_quality.py --small        # 2 seeds x 2 arms x 8 trials x 4 epochs: a smoke run

Task: scikit-learn's real handwritten digits at their native 8x8, with only 15 training and 10 validation
images per class (the small, noisy validation sets this tool exists for), and a held-out labeled test set
of 1,000 other digits that no search sees. The space is wide, with real bad regions: lr 1e-5..1e-1 (too
small learns nothing in 6 epochs, too large diverges), batch size 8..128, head width, dropout up to 0.7,
weight decay up to 1e-2, and augmentation (a random flip is wrong for digits).

Arms (each a real `python -m tune.search`, one trial at a time so that trial-epochs are a clock):
  tpe+asha, random+fifo, tpe+fifo, random+asha  - the same number of trials (--trials, default 16)
  tpe+asha@budget                               - TPE+ASHA with more trials, cut at random+fifo's trial-epochs
Judged by the held-out test accuracy of the checkpoint each arm hands over (its best trial by best_val_acc,
as the summary and tune.best pick it), and by validation: the best found against trial-epochs spent.
Writes a table (markdown, stdout) and an anytime-curve PNG (best validation accuracy vs trial-epochs, mean
and spread over seeds) into --out.
"""
# ----------------------------------------------------------------------------- setup
import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACE = """
search: {{samples: {samples}, epochs: {epochs}, grace_period: {grace}, reduction_factor: 3, metric: val_acc, max_concurrent: 1}}
params:
  model: cnn
  weights: none
  image_size: 8
  normalize: half
  lr: {{loguniform: [1.0e-5, 1.0e-1]}}
  batch_size: {{choice: [8, 16, 32, 64, 128]}}
  head_width: {{choice: [0, 64, 256]}}
  dropout: {{quniform: [0.0, 0.7, 0.1]}}
  weight_decay: {{choice: [0.0, 1.0e-4, 1.0e-2]}}
  augment: {{choice: [false, true]}}
"""
ARMS = {"tpe+asha": ("tpe", "asha"), "random+fifo": ("random", "fifo"), "tpe+fifo": ("tpe", "fifo"),
        "random+asha": ("random", "asha")}


# ----------------------------------------------------------------------------- data
def make_task(root, train_per_class=15, val_per_class=10, test=1000, seed=0):
    """Digits as two ImageFolders: `task` (Train/Validation, what searches see) and `holdout` (Validation =
    the held-out labeled test digits, for scoring the handed-over checkpoints)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    taken = {"Train": [], "Validation": []}
    for label in range(10):
        rows = [i for i in order if digits.target[i] == label]
        taken["Train"] += rows[:train_per_class]
        taken["Validation"] += rows[train_per_class:train_per_class + val_per_class]
    used = set(taken["Train"]) | set(taken["Validation"])
    held_out = [i for i in order if i not in used][:test]
    for folder, split, rows in (("task", "Train", taken["Train"]), ("task", "Validation", taken["Validation"]),
                                ("holdout", "Train", taken["Train"]), ("holdout", "Validation", held_out)):
        for i in rows:
            path = Path(root, folder, split, str(digits.target[i]), f"{i}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8)).save(path)
    return Path(root, "task"), Path(root, "holdout")


# ----------------------------------------------------------------------------- runs
def search(space_file, data, runs, name, sampler, scheduler, seed, log):
    """One `python -m tune.search`; returns its wall time."""
    cmd = [sys.executable, "-m", "tune.search", "--space", str(space_file), "--data", str(data), "--storage", str(runs),
           "--name", name, "--seed", str(seed), "--sampler", sampler, "--scheduler", scheduler]
    start = time.time()
    with open(log, "w") as f:
        code = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")})
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}; see {log}")
    return time.time() - start


def trials_in_order(exp_dir):
    """trials.csv, in the order the trials finished (one at a time), with cumulative trial-epochs."""
    table = pd.read_csv(Path(exp_dir, "trials.csv"), dtype={"trial_id": str})
    ends = {row.trial_id: json.loads(Path(row.path, "result.json").read_text().splitlines()[-1])["timestamp"]
            for row in table.itertuples()}
    table = table.assign(end=table.trial_id.map(ends)).sort_values("end", kind="stable").reset_index(drop=True)
    return table.assign(trial_epochs=table.epochs.cumsum())


def test_accuracy(checkpoint, holdout, cache):
    """Accuracy of a kept checkpoint on the held-out digits."""
    import torch

    from dogs import checkpoint as ckpt_io
    from dogs.data import VALIDATION
    from dogs.splits import load_split
    from dogs.predict import predict_images

    model, ckpt = ckpt_io.load(Path(checkpoint, ckpt_io.FILENAME))
    config = {**ckpt["config"], "cache_dir": str(cache)}
    _, split = load_split(holdout, VALIDATION, config)
    predicted = predict_images(model, config, split.images, split.index, torch.device("cpu"))
    return float((predicted == split.labels[split.index]).mean())


def handed_over(table, budget=None):
    """The trial an arm hands over: the best best_val_acc among the trials finished within `budget`
    trial-epochs (the first of equals, as the summary picks)."""
    done = table if budget is None else table[table.trial_epochs <= budget]
    return done.loc[done.best_val_acc.idxmax()] if len(done) else None


def anytime(table, grid):
    """Best best_val_acc among finished trials after each number of trial-epochs in `grid` (nan before any)."""
    best = table.best_val_acc.cummax().to_numpy()
    at = np.searchsorted(table.trial_epochs.to_numpy(), grid, side="right") - 1
    return np.where(at >= 0, best[np.clip(at, 0, None)], np.nan)


def early_rank_correlation(tables, epochs):
    """How well an early epoch ranks trials (what ASHA relies on): Spearman correlation, over the trials of the
    FIFO runs (every trial ran all epochs), of val_acc at epoch k with the final best_val_acc; mean over runs."""
    rows = []
    for (arm, seed), table in tables.items():
        if not arm.endswith("fifo"):
            continue
        curves = [[json.loads(line)["val_acc"] for line in Path(p, "result.json").read_text().splitlines()]
                  for p in table.path]
        for k in range(1, epochs):
            early = pd.Series([c[k - 1] for c in curves])
            rows.append({"epoch": k, "arm": arm, "seed": seed,
                         "spearman": early.corr(table.best_val_acc.reset_index(drop=True), method="spearman")})
    return pd.DataFrame(rows).groupby("epoch").spearman.agg(["mean", "std", "count"]).reset_index()


def markdown(frame):
    """A DataFrame as a markdown table (numbers to 3 decimals)."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="2 seeds, 2 arms, 8 trials x 4 epochs")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--budget-trials", type=int, default=48, help="trials of the tpe+asha@budget arm")
    p.add_argument("--grace", type=int, nargs="+", default=[1],
                   help="ASHA grace periods to compare: each one past the first adds tpe+asha and tpe+asha@budget arms")
    p.add_argument("--arms", nargs="+", help="run only these arms (names as in the table, e.g. random+fifo "
                   "'tpe+asha@budget g2'); default: all; random+fifo is always run (the reference)")
    p.add_argument("--out", default=str(ROOT / "outputs" / "search_quality"), help="runs, data, table, PNG")
    args = p.parse_args()
    arms = dict(ARMS)
    if args.small:
        args.seeds, args.trials, args.epochs, args.budget_trials = 2, 8, 4, 16
        arms = {k: ARMS[k] for k in ("tpe+asha", "random+fifo")}
    out = Path(args.out)
    runs, cache = out / "runs", out / "cache"
    os.environ["DOGS_CACHE"] = str(cache)
    task, holdout = make_task(out / "data")
    print(f"# search quality — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start; {args.seeds} seeds, {args.trials} trials x "
          f"{args.epochs} epochs", flush=True)

    # every arm x seed, each a real search
    spaces = {}
    for samples in (args.trials, args.budget_trials):
        for grace in args.grace:
            tag = "" if grace == args.grace[0] else f"-g{grace}"
            spaces[samples, grace] = out / f"space-{samples}{tag}.yaml"
            spaces[samples, grace].write_text(SPACE.format(samples=samples, epochs=args.epochs, grace=grace))
    first = args.grace[0]
    plan = [(arm, s, c, args.trials, first) for arm, (s, c) in arms.items()]
    plan += [("tpe+asha@budget", "tpe", "asha", args.budget_trials, first)]
    for grace in args.grace[1:]:   # the same TPE+ASHA arms with another grace period
        plan += [(f"tpe+asha g{grace}", "tpe", "asha", args.trials, grace),
                 (f"tpe+asha@budget g{grace}", "tpe", "asha", args.budget_trials, grace)]
    if args.arms:
        plan = [row for row in plan if row[0] in {*args.arms, "random+fifo"}]
    tables, walls = {}, {}
    for seed in range(args.seeds):
        for arm, sampler, scheduler, samples, grace in plan:
            name = f"{arm.replace('+', '-').replace('@', '-').replace(' ', '-')}-s{seed}"
            if not Path(runs, name, "trials.csv").is_file():
                walls[arm, seed] = search(spaces[samples, grace], task, runs, name, sampler, scheduler, seed,
                                          out / f"{name}.log")
                print(f"  {name}: {walls[arm, seed]:.0f} s", flush=True)
            tables[arm, seed] = trials_in_order(runs / name)

    # score every trial's kept checkpoint on the held-out digits, once (kept in <run>/test_acc.csv)
    for (arm, seed), table in tables.items():
        scored = Path(table.path.iloc[0]).parent / "test_acc.csv"
        if scored.is_file():
            table["test_acc"] = table.trial_id.map(pd.read_csv(scored, dtype={"trial_id": str}).set_index("trial_id").test_acc)
        else:
            table["test_acc"] = [test_accuracy(c, holdout, cache) for c in table.checkpoint]
            table[["trial_id", "test_acc"]].to_csv(scored, index=False)

    # per arm and seed: best found, what it cost, what it hands over
    rows = []
    for (arm, seed), table in tables.items():
        ref = tables["random+fifo", seed]
        ref_best, ref_epochs = ref.best_val_acc.max(), int(ref.trial_epochs.iloc[-1])
        reached = table[table.best_val_acc.cummax() >= ref_best]
        pick, pick_budget = handed_over(table), handed_over(table, ref_epochs)
        rows.append({
            "arm": arm, "seed": seed, "trials": len(table), "trial_epochs": int(table.trial_epochs.iloc[-1]),
            "median_trial_val": table.best_val_acc.median(), "best_val": table.best_val_acc.max(),
            "test_acc": pick.test_acc,
            "epochs_to_random_best": int(reached.trial_epochs.iloc[0]) if len(reached) else np.inf,
            "fraction_of_random_epochs": (reached.trial_epochs.iloc[0] / ref_epochs) if len(reached) else np.inf,
            "test_acc_at_random_budget": pick_budget.test_acc if pick_budget is not None else np.nan,
        })
    per_seed = pd.DataFrame(rows)
    per_seed.to_csv(out / "per_seed.csv", index=False)
    summary = per_seed.groupby("arm", sort=False).agg(
        trials=("trials", "first"), trial_epochs=("trial_epochs", "mean"),
        median_trial_val=("median_trial_val", "mean"), best_val=("best_val", "mean"),
        best_val_sd=("best_val", "std"), test_acc=("test_acc", "mean"), test_acc_sd=("test_acc", "std"),
        fraction_of_random_epochs_median=("fraction_of_random_epochs", "median"),
        test_acc_at_random_budget=("test_acc_at_random_budget", "mean"))
    print(markdown(summary.reset_index()))
    print("\nper seed:\n" + markdown(per_seed))
    budgets = [b for b in (24, 32, 48, 64, 96, 128, 192) if b <= per_seed.trial_epochs.max()]
    at_budget = pd.DataFrame([{"arm": arm, **{f"{b} ep": np.mean([getattr(handed_over(tables[arm, s], b), "test_acc", np.nan)
                                                                 for s in range(args.seeds)]) for b in budgets}}
                              for arm in dict.fromkeys(a for a, _ in tables)])
    print("\ntest accuracy of the checkpoint handed over after B trial-epochs (mean over seeds; a run that ended "
          "sooner hands over its final pick; nan = some seed had no trial finished by then):\n" + markdown(at_budget))
    print("\nhow well epoch k ranks trials (Spearman of val_acc at epoch k with the final best_val_acc, FIFO runs):\n"
          + markdown(early_rank_correlation(tables, args.epochs)))

    # anytime curve: best validation accuracy vs trial-epochs, mean and spread over seeds
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(int(t.trial_epochs.iloc[-1]) for t in tables.values())
    grid = np.arange(1, top + 1)
    fig, ax = plt.subplots(figsize=(8, 5))
    for arm in dict.fromkeys(arm for arm, *_ in plan):
        curves = np.array([anytime(tables[arm, s], grid) for s in range(args.seeds)])
        ends = min(int(tables[arm, s].trial_epochs.iloc[-1]) for s in range(args.seeds))
        with warnings.catch_warnings():   # before any trial has finished: no value yet
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, sd = np.nanmean(curves, 0)[:ends], np.nanstd(curves, 0)[:ends]
        ax.plot(grid[:ends], mean, label=arm)
        ax.fill_between(grid[:ends], mean - sd, mean + sd, alpha=0.15)
    ax.set(xlabel="trial-epochs spent", ylabel="best validation accuracy so far",
           title=f"digits 8x8, 15 train / 10 val per class; mean ± sd over {args.seeds} seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "anytime.png", dpi=100)
    print(f"\nanytime curve: {out / 'anytime.png'}; per-seed table: {out / 'per_seed.csv'}")


if __name__ == "__main__":
    main()
