"""Does --warm-start help? Trials a new search needs to reach an old search's best, warm-started from it vs. cold.

    python bench/warm_start.py                 # 1 old search + 4 seeds x (cold, warm), 16 trials x 6 epochs each
                                               # (~10-20 min on a shared 2-core CPU; bench/RESULTS.md)
    python bench/warm_start.py --small         # 2 seeds, 6 trials x 2 epochs: a smoke run

Task: bench/search_quality.py's digits (real handwritten digits at 8x8, 15 training and 10 validation images per
class) and its wide space (lr 1e-5..1e-1, batch size, head width, dropout, weight decay, augmentation), TPE+ASHA,
one trial at a time. The old search: --trials trials with seed 100. Then per seed s, two new searches of --trials
trials with seed s: cold, and warm (`--warm-start <old>`: its finished trials seed the study, TPE models them from
the first ask). Counted: the new trials (in the order they finished) until one's best_val_acc reaches the old
search's best (>=), and the best validation accuracy after 4, 8 and all new trials. Writes warm_start.csv and a
markdown table (stdout) into --out.
"""
# ----------------------------------------------------------------------------- setup
import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.search_quality import SPACE, make_task, markdown, search, trials_in_order   # noqa: E402

OLD_SEED = 100


# ----------------------------------------------------------------------------- runs
def run(space, task, runs, name, seed, out, extra=()):
    """One TPE+ASHA search (kept: a rerun of the bench reuses it); its trials in the order they finished."""
    if not Path(runs, name, "trials.csv").is_file():
        wall = search(space, task, runs, name, "tpe", "asha", seed, out / f"{name}.log", extra)
        print(f"  {name}: {wall:.0f} s", flush=True)
    return trials_in_order(runs / name)


def trials_to_reach(table, target):
    """How many new trials until one's best_val_acc reaches `target` (inf: none did)."""
    reached = np.flatnonzero(table.best_val_acc.cummax().to_numpy() >= target - 1e-12)
    return int(reached[0]) + 1 if len(reached) else np.inf


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="2 seeds, 6 trials x 2 epochs")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--out", default=str(ROOT / "outputs" / "warm_start"), help="runs, data, table")
    args = p.parse_args()
    if args.small:
        args.seeds, args.trials, args.epochs = 2, 6, 2
    out = Path(args.out).resolve()
    runs = out / "runs"
    os.environ["DOGS_CACHE"] = str(out / "cache")
    task, _ = make_task(out / "data")
    space = out / "space.yaml"
    space.write_text(SPACE.format(samples=args.trials, epochs=args.epochs, grace=1))
    print(f"# warm start — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start; {args.seeds} seeds, {args.trials} trials x {args.epochs} epochs",
          flush=True)
    start = time.time()

    # the old search, then per seed a cold and a warm-started new search
    old = run(space, task, runs, "old", OLD_SEED, out)
    target = old.best_val_acc.max()
    rows = []
    for seed in range(args.seeds):
        for arm, extra in (("cold", ()), ("warm", ("--warm-start", str(runs / "old")))):
            table = run(space, task, runs, f"{arm}-s{seed}", seed, out, extra)
            best = table.best_val_acc.cummax().to_numpy()
            rows.append({"arm": arm, "seed": seed, "trials_to_old_best": trials_to_reach(table, target),
                         "best_after_4": best[min(3, len(best) - 1)], "best_after_8": best[min(7, len(best) - 1)],
                         "best_after_all": best[-1], "trial_epochs": int(table.trial_epochs.iloc[-1]),
                         "median_trial_val": table.best_val_acc.median()})
    per_seed = pd.DataFrame(rows)
    per_seed.to_csv(out / "warm_start.csv", index=False)

    # one row per arm: median trials to the old best (inf: not within the search), how many seeds reached it
    summary = per_seed.groupby("arm", sort=False).agg(
        seeds_reaching_old_best=("trials_to_old_best", lambda v: f"{int(np.isfinite(v).sum())}/{len(v)}"),
        median_trials_to_old_best=("trials_to_old_best", "median"),
        best_after_4=("best_after_4", "mean"), best_after_8=("best_after_8", "mean"),
        best_after_all=("best_after_all", "mean"), trial_epochs=("trial_epochs", "mean"),
        median_trial_val=("median_trial_val", "mean")).reset_index()
    print(f"\nold search (seed {OLD_SEED}, {len(old)} trials): best_val_acc {target:.3f}; "
          f"{time.time() - start:.0f} s in all, load average {os.getloadavg()[0]:.1f} at the end\n")
    print(markdown(summary))
    print("\nper seed:\n" + markdown(per_seed))


if __name__ == "__main__":
    main()
