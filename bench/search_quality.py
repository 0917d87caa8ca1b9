"""Does the search earn its keep? Searchers and schedulers side by side on a task that is not saturated.

    python bench/search_quality.py                # 5 seeds x 4 arms x 16 trials x 6 epochs + the budget arm
                                                  # (~25 min on 2 CPU cores; bench/RESULTS.md)
    python bench/search_quality.py --small        # 2 seeds x 2 arms x 8 trials x 4 epochs: a smoke run
    python bench/search_quality.py --select       # issue 18: single best trial vs the top K re-evaluated with
                                                  # N seeds, at equal trial-epochs, on digits and objects

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

--select (issue 18, "choose the model that will do best on new photos"): per task and seed one TPE+ASHA search
of --budget-trials trials, one at a time. Its first --trials trials are "the search"; then
  single best      - the trial with the best best_val_acc, among the trials finished within the search's
                     trial-epochs + K*N*epochs (the same search given the re-evaluation's compute as more trials)
  top K x N        - the K best distinct configurations of the search, each retrained with seeds 1..N for
                     `epochs` epochs (dogs.engine.Run, in this process, one after another: K*N*epochs
                     trial-epochs); the configuration with the best mean best_val_acc over its seeds hands over
                     its best seed ("re-evaluated") or all N seeds' softmax averaged ("ensemble")
  holdout          - with --holdout F: another search of --trials trials with search.holdout F, and tune.best's
                     re-evaluation itself (tune.reevaluate: K_max x N_max runs on a local Ray, configurations
                     compared on the held-out part of Validation); its chosen configuration's best seed
for each (K, N) of --select-grid, all from one K_max x N_max set of retrains. Tasks: digits (above) and
objects (bench/objects.py: generated textured-object photos, 6 classes, --objects-train photos per class,
16 px). Writes select.csv, a table and select.png into --out.
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
# the objects task: the same space at 16 px, where a random flip is right (a mirrored star is a star)
OBJECT_SPACE = SPACE.replace("image_size: 8", "image_size: 16")
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
def search(space_file, data, runs, name, sampler, scheduler, seed, log, extra=()):
    """One `python -m tune.search` (`extra`: more flags); returns its wall time."""
    cmd = [sys.executable, "-m", "tune.search", "--space", str(space_file), "--data", str(data), "--storage", str(runs),
           "--name", name, "--seed", str(seed), "--sampler", sampler, "--scheduler", scheduler, *extra]
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


def holdout_probs(checkpoint, holdout, cache):
    """(softmax, labels) of a kept checkpoint (a trial's checkpoint folder or a .pt file) on the held-out data."""
    import torch

    from dogs import checkpoint as ckpt_io
    from dogs.data import VALIDATION
    from dogs.submission import predict_probs
    from dogs.splits import load_split

    path = Path(checkpoint)
    model, ckpt = ckpt_io.load(path if path.is_file() else path / ckpt_io.FILENAME)
    config = {**ckpt["config"], "cache_dir": str(cache)}
    _, split = load_split(holdout, VALIDATION, config)
    probs = predict_probs(model, config, split.images, split.index, torch.device("cpu"))
    return probs, split.labels[split.index]


def test_accuracy(checkpoint, holdout, cache):
    """Accuracy of a kept checkpoint on the held-out data."""
    probs, labels = holdout_probs(checkpoint, holdout, cache)
    return float((probs.argmax(1) == labels).mean())


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

# ----------------------------------------------------------------------------- selection (issue 18)
# per task: epochs per trial, trials of the whole search (enough to give the single-best arm the re-evaluation's
# epochs as more trials), and the task's data
SELECT_TASKS = {"digits": {"epochs": 6, "budget_trials": 48, "space": SPACE},
                "objects": {"epochs": 4, "budget_trials": 40, "space": OBJECT_SPACE}}


def top_configs(table, k):
    """The k best distinct configurations of a trials table by best_val_acc (the first of equals), as the
    trials' params.json."""
    seen, top = set(), []
    for path in table.sort_values("best_val_acc", ascending=False, kind="stable").path:
        config = json.loads(Path(path, "params.json").read_text())
        key = json.dumps(config, sort_keys=True)
        if key not in seen and len(top) < k:
            seen.add(key)
            top.append(config)
    return top


def retrain(config, seed, out_dir, task, cache):
    """One re-evaluation run: a trial's config with another seed, the epoch loop of dogs.train.run without its
    prediction grid (dogs.engine.Run, in this process; best.pt = the best epoch); its result is kept in
    out_dir/result.json, so a rerun of the bench redoes nothing."""
    from dogs import checkpoint
    from dogs.config import resolve
    from dogs.engine import Run

    done = Path(out_dir, "result.json")
    if done.is_file():
        return json.loads(done.read_text())
    start = time.time()
    run = Run(resolve({**config, "seed": seed, "data": str(task), "cache_dir": str(cache)}), log_fn=lambda *_: None)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for _ in run.epochs():
        if run.improved:
            checkpoint.save(run.state(), Path(out_dir, "best.pt"))
    kept = {"best_val_acc": run.best, "epochs": run.epoch, "wall_s": time.time() - start,
            "checkpoint": str(Path(out_dir, "best.pt"))}
    done.write_text(json.dumps(kept))
    return kept


def select_seed(task_name, seed, args, out):
    """One search and its re-evaluations on one task -> rows of select.csv, one per (K, N) of the grid."""
    setting = SELECT_TASKS[task_name]
    base, cache = out / task_name, out / "cache"
    if task_name == "digits":
        task, holdout = make_task(base / "data")
    else:
        from objects import make_objects

        task, holdout = make_objects(base / "data", train=args.objects_train, val=args.objects_val, test=200)
    space = base / "space.yaml"
    space.write_text(setting["space"].format(samples=setting["budget_trials"], epochs=setting["epochs"], grace=1))
    name, runs = f"select-s{seed}", base / "runs"
    if not Path(runs, name, "trials.csv").is_file():
        wall = search(space, task, runs, name, "tpe", "asha", seed, base / f"{name}.log")
        print(f"  {task_name} {name}: {wall:.0f} s", flush=True)
    table = trials_in_order(runs / name)
    first = table.iloc[:args.trials]
    search_epochs = int(first.trial_epochs.iloc[-1])

    # the K_max x N_max retrains, seeds 1..N (the search's trials ran with seed 0)
    k_max, n_max = max(k for k, _ in args.select_grid), max(n for _, n in args.select_grid)
    top = top_configs(first, k_max)
    start = time.time()
    runs_ = {(i, n): retrain(top[i], n, runs / name / "reeval" / f"top{i + 1}-seed{n}", task, cache)
             for i in range(len(top)) for n in range(1, n_max + 1)}
    print(f"  {task_name} {name}: {len(runs_)} retrains, {time.time() - start:.0f} s", flush=True)
    probs = {}

    def scored(checkpoint):   # (softmax, labels) on the held-out data, once per checkpoint
        if checkpoint not in probs:
            probs[checkpoint] = holdout_probs(checkpoint, holdout, cache)
        return probs[checkpoint]

    def accuracy(p, labels):
        return float((p.argmax(1) == labels).mean())

    holdout_test = holdout_arm(task_name, seed, args, out, task, scored, accuracy) if args.holdout else np.nan
    alone = handed_over(first)
    rows = []
    for k, n in args.select_grid:
        # single best at equal compute: the same search, the re-evaluation's epochs spent on more trials
        budget = search_epochs + k * n * setting["epochs"]
        single = handed_over(table, budget)
        # re-evaluated: the configuration with the best mean over seeds 1..n, its best seed; ensemble: all n
        means = [np.mean([runs_[i, m]["best_val_acc"] for m in range(1, n + 1)]) for i in range(min(k, len(top)))]
        chosen = int(np.argmax(means))
        seeds = [runs_[chosen, m] for m in range(1, n + 1)]
        best_seed = seeds[int(np.argmax([r["best_val_acc"] for r in seeds]))]
        members = [scored(r["checkpoint"]) for r in seeds]
        labels = members[0][1]
        rows.append({
            "task": task_name, "seed": seed, "K": k, "N": n, "search_trials": len(first),
            "search_epochs": search_epochs, "budget_epochs": budget,
            "single_trials": int((table.trial_epochs <= budget).sum()),
            "single_epochs": int(table.trial_epochs[table.trial_epochs <= budget].iloc[-1]),
            "search_only_test": accuracy(*scored(str(alone.checkpoint))),
            "single_val": single.best_val_acc, "single_test": accuracy(*scored(str(single.checkpoint))),
            "reeval_rank": chosen + 1, "reeval_val_mean": means[chosen],
            "reeval_test": accuracy(*scored(best_seed["checkpoint"])),
            "ensemble_test": accuracy(np.mean([p for p, _ in members], 0), labels),
            "holdout_test": holdout_test if (k, n) == (k_max, n_max) else np.nan,
        })
    return rows


def holdout_arm(task_name, seed, args, out, task, scored, accuracy):
    """--holdout F: a search of --trials trials with search.holdout F, then tune.best's re-evaluation itself
    (tune.reevaluate, K_max x N_max runs on a local Ray, compared on the held-out part of Validation); the
    held-out test accuracy of the chosen configuration's best seed."""
    from tune.experiment import Experiment
    from tune.reevaluate import checkpoint_of, reevaluate

    setting, base = SELECT_TASKS[task_name], out / task_name
    space = base / f"space-holdout{args.holdout:g}.yaml"
    space.write_text(setting["space"].format(samples=args.trials, epochs=setting["epochs"], grace=1).replace(
        "max_concurrent: 1}", f"max_concurrent: 1, holdout: {args.holdout}}}"))
    name, runs = f"holdout{args.holdout:g}-s{seed}", base / "runs"
    if not Path(runs, name, "trials.csv").is_file():
        wall = search(space, task, runs, name, "tpe", "asha", seed, base / f"{name}.log")
        print(f"  {task_name} {name}: {wall:.0f} s", flush=True)
    k_max, n_max = max(k for k, _ in args.select_grid), max(n for _, n in args.select_grid)
    start = time.time()
    exp = Experiment.open(str(runs / name))
    result = reevaluate(exp, top=k_max, seeds=n_max, log=lambda *_: None)
    print(f"  {task_name} {name}: tune.reevaluate {k_max} x {n_max}, {time.time() - start:.0f} s", flush=True)
    return accuracy(*scored(str(checkpoint_of(exp, result.runs[0]))))


def select_main(args, out):
    """--select: the table of issue 18 over tasks and seeds, select.csv and select.png."""
    rows = []
    for task_name in args.tasks:
        for seed in args.only_seeds or range(args.seeds):
            rows += select_seed(task_name, seed, args, out)
            pd.DataFrame(rows).to_csv(out / "select.csv", index=False)
    table = pd.DataFrame(rows)
    summary = table.groupby(["task", "K", "N"], sort=False).agg(
        seeds=("seed", "count"), search_epochs=("search_epochs", "mean"), budget_epochs=("budget_epochs", "mean"),
        single_epochs=("single_epochs", "mean"), search_only=("search_only_test", "mean"),
        search_only_sd=("search_only_test", "std"), single_best=("single_test", "mean"),
        single_best_sd=("single_test", "std"), reevaluated=("reeval_test", "mean"), reevaluated_sd=("reeval_test", "std"),
        ensemble=("ensemble_test", "mean"), ensemble_sd=("ensemble_test", "std"),
        holdout=("holdout_test", "mean"), holdout_sd=("holdout_test", "std")).reset_index()
    print(markdown(summary))
    print("\nper seed:\n" + markdown(table))

    # plot: per task, the held-out test accuracy of each arm per (K, N), mean and sd over seeds
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.tasks), figsize=(6 * len(args.tasks), 4.5), squeeze=False)
    for ax, task_name in zip(axes[0], args.tasks):
        part = summary[summary.task == task_name].reset_index(drop=True)
        x = np.arange(len(part))
        for dx, (col, label) in zip((-0.2, 0, 0.2), (("single_best", "single best trial, equal compute"),
                                                      ("reevaluated", "top K re-evaluated, best seed"),
                                                      ("ensemble", "top K re-evaluated, N seeds averaged"))):
            ax.errorbar(x + dx, part[col], yerr=part[f"{col}_sd"], fmt="o", capsize=4, label=label)
        if part.holdout.notna().any():
            ax.errorbar(x + 0.3, part.holdout, yerr=part.holdout_sd, fmt="s", capsize=4,
                        label=f"search with holdout {args.holdout:g}, top K re-evaluated on it (tune.reevaluate)")
        ax.axhline(part.search_only.iloc[0], color="grey", ls=":", label="single best of the search alone")
        ax.set_xticks(x, [f"K={k} N={n}\n+{k * n} runs" for k, n in zip(part.K, part.N)])
        ax.set(ylabel="held-out test accuracy (mean ± sd over seeds)", title=task_name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "select.png", dpi=100)
    print(f"\nplot: {out / 'select.png'}; per-seed table: {out / 'select.csv'}")


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
    p.add_argument("--select", action="store_true", help="issue 18: single best vs top K re-evaluated (see above)")
    p.add_argument("--tasks", nargs="+", default=list(SELECT_TASKS), choices=list(SELECT_TASKS), help="--select's tasks")
    p.add_argument("--select-grid", nargs="+", default=["1x3", "2x2", "3x2", "3x3"],
                   help="--select's K x N pairs (top K configurations, N seeds each); one K_max x N_max set of retrains")
    p.add_argument("--only-seeds", type=int, nargs="+", help="--select: run only these seeds (several processes "
                   "at once on one --out, each its own seeds; a last run without it makes the table of all)")
    p.add_argument("--holdout", type=float, help="--select: also a search with search.holdout HOLDOUT whose top "
                   "K_max x N_max are re-evaluated by tune.reevaluate and compared on the held-out part")
    p.add_argument("--objects-train", type=int, default=100, help="objects task: training photos per class")
    p.add_argument("--objects-val", type=int, default=30, help="objects task: validation photos per class")
    args = p.parse_args()
    args.select_grid = [tuple(int(v) for v in pair.split("x")) for pair in args.select_grid]
    if args.select:
        import torch

        torch.set_num_threads(1)   # one thread, like a search trial (cpus_per_trial 1); the machine is shared
        out = Path(args.out).resolve()   # tune.reevaluate takes an absolute experiment path (or a URI)
        out.mkdir(parents=True, exist_ok=True)
        os.environ["DOGS_CACHE"] = str(out / "cache")
        if args.small:
            args.seeds, args.trials, args.select_grid, args.objects_train, args.objects_val = 1, 6, [(2, 1), (2, 2)], 20, 10
            for setting in SELECT_TASKS.values():
                setting.update(epochs=2, budget_trials=10)
        print(f"# selection — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f} at start; {args.seeds} seeds, {args.trials} trials, grid {args.select_grid}",
              flush=True)
        return select_main(args, out)
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
