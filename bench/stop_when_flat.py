"""Does search.stop_when_flat save time without losing accuracy? (issue 26, item 7)

    python bench/stop_when_flat.py             # 5 seeds x (all 16 trials, stop_when_flat 4) x 6 epochs, plus the
                                               # rule replayed at other M on the full runs (bench/RESULTS.md)
    python bench/stop_when_flat.py --small     # 2 seeds x 8 trials x 3 epochs, stop_when_flat 2: a smoke run

Task and space: bench/search_quality.py's (scikit-learn's digits at 8x8 px, 15 training and 10 validation images
per class, 1,000 held-out digits no search sees; a wide space with bad regions). Each arm is a real
`python -m tune.search`, TPE+ASHA, one trial at a time and seeded, so a search stopped early ran the same first
trials as the full one (checked below: "replay agrees").

Arms per seed:
  all                  every trial of --trials
  stop_when_flat M     search.stop_when_flat M (--flat), a real search
  replayed M           the rule (tune.stop_when_flat.streaks) over the full run's trials in the order they finished,
                       for each M of --replay: what the setting would have run, without running it
  ..., complete only   a variant replayed: only trials that ran all their epochs count (ASHA's stops do not)
Judged by the held-out test accuracy of the trial handed over (the summary's best trial: the best best_val_acc, of
equal ones the first by trial id, dogs.ranking) against the trials, trial-epochs and wall time spent.
"""
# ----------------------------------------------------------------------------- setup
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from search_quality import SPACE, make_task, markdown, search, test_accuracy   # noqa: E402

from dogs import ranking   # noqa: E402
from tune.stop_when_flat import finished_at, streaks   # noqa: E402


# ----------------------------------------------------------------------------- what a run hands over and costs
def trials_in_order(exp_dir):
    """trials.csv in the order the trials finished: each one's last reported_at (Ray's whole-second timestamp, which
    search_quality.trials_in_order sorts by, ties trials that end in the same second)."""
    table = pd.read_csv(Path(exp_dir, "trials.csv"), dtype={"trial_id": str})
    ends = [finished_at(json.loads(Path(path, "result.json").read_text().splitlines()[-1])) for path in table.path]
    return table.assign(end=ends).sort_values("end", kind="stable").reset_index(drop=True)


def handed_over(table):
    """The summary's pick among these trials: the best best_val_acc, of equal ones the first by trial id."""
    rows = table.sort_values("trial_id")
    return rows.loc[ranking.best(rows.index, lambda i: rows.at[i, "best_val_acc"], "max")]


def stop_point(table, m, complete_only=False):
    """How many of the full run's trials (in the order they finished) the setting M would have run: up to the first
    trial after which M in a row could not beat the best's interval; all of them when that never happens.
    `complete_only`: a variant of the rule that counts only trials that ran all their epochs (not ASHA's stops)."""
    counted = table[table.epochs == table.epochs.max()] if complete_only else table
    finished = [(row.trial_id, row.best_val_acc, (row.best_val_acc_low, row.best_val_acc_high))
                for row in counted.itertuples()]
    at = next((i for i, (count, _) in enumerate(streaks(finished, "max")) if count >= m), None)
    return len(table) if at is None else int(table.index.get_loc(counted.index[at])) + 1


def searched(table):
    """The searched values of each trial, in the order they finished (to compare two runs' trials)."""
    names = [c for c in ("lr", "batch_size", "head_width", "dropout", "weight_decay", "augment") if c in table]
    return [tuple(values) for values in table[names].astype(str).itertuples(index=False)]


def row(arm, seed, table, test_acc, wall_s=np.nan, m=None):
    pick = handed_over(table)
    return {"arm": arm, "M": m, "seed": seed, "trials": len(table), "trial_epochs": int(table.epochs.sum()),
            "wall_s": wall_s, "best_val": pick.best_val_acc, "test_acc": test_acc[pick.trial_id]}


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="2 seeds x 8 trials x 3 epochs, stop_when_flat 2")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--flat", type=int, default=4, help="search.stop_when_flat of the real stopped arm")
    p.add_argument("--replay", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="M of the replayed arms")
    p.add_argument("--out", default=str(ROOT / "outputs" / "stop_when_flat"), help="runs, data, tables")
    args = p.parse_args()
    if args.small:
        args.seeds, args.trials, args.epochs, args.flat, args.replay = 2, 8, 3, 2, [2, 3]
    out = Path(args.out).resolve()
    runs, cache = out / "runs", out / "cache"
    os.environ["DOGS_CACHE"] = str(cache)
    task, holdout = make_task(out / "data")
    began = time.time()
    print(f"# stop_when_flat — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start; {args.seeds} seeds, {args.trials} trials x {args.epochs} epochs, "
          f"stop_when_flat {args.flat}", flush=True)
    base = SPACE.format(samples=args.trials, epochs=args.epochs, grace=1)
    spaces = {"all": out / "space-all.yaml", "flat": out / f"space-flat{args.flat}.yaml"}
    out.mkdir(parents=True, exist_ok=True)
    spaces["all"].write_text(base)
    spaces["flat"].write_text(base.replace("max_concurrent: 1}", f"max_concurrent: 1, stop_when_flat: {args.flat}}}"))

    # each seed: the full search and the stopped one, real; every trial's checkpoint scored on the held-out digits
    rows, agree = [], []
    for seed in range(args.seeds):
        tables, walls = {}, {}
        for arm in ("all", "flat"):
            name = f"{arm}-s{seed}"
            done = Path(runs, name, "wall_s.json")
            if not done.is_file():
                wall = search(spaces[arm], task, runs, name, "tpe", "asha", seed, out / f"{name}.log")
                done.write_text(json.dumps(wall))
                print(f"  {name}: {wall:.0f} s", flush=True)
            tables[arm], walls[arm] = trials_in_order(runs / name), json.loads(done.read_text())
        test_acc = {}
        for table in tables.values():
            test_acc.update({t: test_accuracy(c, holdout, cache) for t, c in zip(table.trial_id, table.checkpoint)})
        full, flat = tables["all"], tables["flat"]
        rows.append(row("all", seed, full, test_acc, walls["all"]))
        rows.append(row(f"stop_when_flat {args.flat}", seed, flat, test_acc, walls["flat"], args.flat))
        for m in args.replay:
            rows.append(row(f"replayed {m}", seed, full.iloc[:stop_point(full, m)], test_acc, m=m))
        for m in args.replay:   # a variant: ASHA's early stops not counted
            rows.append(row(f"replayed {m}, complete trials only", seed, full.iloc[:stop_point(full, m, True)],
                            test_acc, m=m))
        # the real stopped run ran the full run's first trials, as many as the replay says
        agree.append(searched(flat) == searched(full)[:len(flat)] and len(flat) == stop_point(full, args.flat))

    # the table: per arm, mean ± sd over seeds; and the accuracy lost against the full run, seed by seed
    per_seed = pd.DataFrame(rows)
    per_seed.to_csv(out / "per_seed.csv", index=False)
    full_acc = per_seed[per_seed.arm == "all"].set_index("seed").test_acc
    full_epochs = per_seed[per_seed.arm == "all"].set_index("seed").trial_epochs
    per_seed["lost"] = per_seed.test_acc - per_seed.seed.map(full_acc)
    per_seed["epochs_saved"] = 1 - per_seed.trial_epochs / per_seed.seed.map(full_epochs)

    def pm(series, digits=3):
        return f"{series.mean():.{digits}f} ± {series.std():.{digits}f}"

    summary = pd.DataFrame([{
        "arm": arm, "trials": pm(part.trials, 1), "trial-epochs": pm(part.trial_epochs, 1),
        "epochs saved": f"{100 * part.epochs_saved.mean():.0f}%",
        "wall s": pm(part.wall_s, 0) if part.wall_s.notna().any() else "-", "held-out acc": pm(part.test_acc),
        "acc vs all (worst seed)": f"{part.lost.mean():+.3f} ({part.lost.min():+.3f})",
    } for arm, part in per_seed.groupby("arm", sort=False)])
    print(markdown(summary))
    print("\nper seed:\n" + markdown(per_seed))
    print(f"\nreplay agrees with the real stopped run (same first trials, same stop): {sum(agree)}/{len(agree)} seeds; "
          f"{time.time() - began:.0f} s in all; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
