"""Does search.stop_when_flat save time without losing accuracy? (issue 26, item 7)

    python bench/stop_when_flat.py             # 5 seeds x (all 16 trials, stop_when_flat 4) x 6 epochs, plus the
                                               # rule replayed at other M on the full runs (bench/RESULTS.md)
    python bench/stop_when_flat.py --flat 4 2 --all-from OLD_OUT   # two real M; the full searches of an earlier
                                               # --out reused (the "all" arm does not use the setting)
    python bench/stop_when_flat.py --trials 40 --seeds 3 --flat    # longer searches, the rule replayed only
    python bench/stop_when_flat.py --small     # 2 seeds x 8 trials x 3 epochs, stop_when_flat 2: a smoke run

Task and space: bench/search_quality.py's (scikit-learn's digits at 8x8 px, 15 training and 10 validation images
per class, 1,000 held-out digits no search sees; a wide space with bad regions). Each arm is a real
`python -m tune.search`, TPE+ASHA, one trial at a time and seeded, so a search stopped early ran the same first
trials as the full one (checked below: "replay agrees").

Arms per seed:
  all                  every trial of --trials
  stop_when_flat M     search.stop_when_flat M (each M of --flat), a real search
  replayed M           the rule (tune.ray_tuner.flat_verdict) over the full run's trials in the order they finished,
                       for each M of --replay: what the setting would have run, without running it
  replayed M, old rule the first round's rule replayed: every finished trial counts (ASHA's stops after one epoch
                       too) and no start-up trials are waited for
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
from tune.experiment import read_trials   # noqa: E402
from tune.ray_tuner import finished_at, finished_in_order, flat_min_trials, flat_verdict   # noqa: E402


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


def outcomes(exp_dir, table):
    """tune.ray_tuner.Finished of each trial of `table` (in its order), read from the trial folders."""
    by_id = {t.name: t for t in finished_in_order(read_trials(exp_dir), "val_acc")}
    return [by_id[t] for t in table.trial_id]


def stop_point(finished, m, at_least, old_rule=False):
    """How many of the full run's trials (Finished, in the order they finished) the setting M would have run: up to
    the first trial at which the rule stops (verdict); all of them when it never does. `old_rule`: the first round's
    rule, every finished trial counted and no start-up trials waited for."""
    if old_rule:
        finished, at_least = [t._replace(complete=True) for t in finished], 0
    stops = [flat_verdict(finished[:i], "max", m, at_least) is not None for i in range(1, len(finished) + 1)]
    return stops.index(True) + 1 if any(stops) else len(finished)


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
    p.add_argument("--flat", type=int, nargs="*", default=[4],
                   help="search.stop_when_flat of the real stopped arms (none: the full searches and the replay only)")
    p.add_argument("--replay", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="M of the replayed arms")
    p.add_argument("--all-from", help="an earlier --out whose full searches (runs/all-s*) to reuse, same settings")
    p.add_argument("--out", default=str(ROOT / "outputs" / "stop_when_flat"), help="runs, data, tables")
    args = p.parse_args()
    if args.small:
        args.seeds, args.trials, args.epochs, args.flat, args.replay = 2, 8, 3, [2], [2, 3]
    out = Path(args.out).resolve()
    runs, cache = out / "runs", out / "cache"
    os.environ["DOGS_CACHE"] = str(cache)
    task, holdout = make_task(out / "data")
    began = time.time()
    print(f"# stop_when_flat — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start; {args.seeds} seeds, {args.trials} trials x {args.epochs} epochs, "
          f"stop_when_flat {' and '.join(map(str, args.flat))}; uptime: {' '.join(map(str, os.getloadavg()))}",
          flush=True)
    base = SPACE.format(samples=args.trials, epochs=args.epochs, grace=1)
    at_least = flat_min_trials({"samples": args.trials, "sampler": "tpe"})   # what the real search waits for
    spaces = {"all": out / "space-all.yaml", **{f"flat{m}": out / f"space-flat{m}.yaml" for m in args.flat}}
    out.mkdir(parents=True, exist_ok=True)
    spaces["all"].write_text(base)
    for m in args.flat:
        spaces[f"flat{m}"].write_text(base.replace("max_concurrent: 1}", f"max_concurrent: 1, stop_when_flat: {m}}}"))

    # the searches, real: the full one (or an earlier --out's) and each M's stopped one, seed by seed, M by M
    def run_dir(arm, seed):
        return Path(args.all_from, "runs") if arm == "all" and args.all_from else runs, f"{arm}-s{seed}"

    for arm in spaces:
        for seed in range(args.seeds):
            where, name = run_dir(arm, seed)
            if not Path(where, name, "wall_s.json").is_file():
                if arm == "all" and args.all_from:   # never written into: another run's folder
                    raise SystemExit(f"--all-from {args.all_from}: no finished search {name} there")
                wall = search(spaces[arm], task, where, name, "tpe", "asha", seed, out / f"{name}.log")
                Path(where, name, "wall_s.json").write_text(json.dumps(wall))
                print(f"  {name}: {wall:.0f} s", flush=True)

    # each seed: every trial's checkpoint scored on the held-out digits; the rule replayed on the full run
    rows, agree = [], []
    for seed in range(args.seeds):
        tables, walls = {}, {}
        for arm in spaces:
            where, name = run_dir(arm, seed)
            tables[arm] = trials_in_order(where / name)
            walls[arm] = json.loads((where / name / "wall_s.json").read_text())
        test_acc = {}
        for table in tables.values():
            test_acc.update({t: test_accuracy(c, holdout, cache) for t, c in zip(table.trial_id, table.checkpoint)})
        full = tables["all"]
        finished = outcomes(run_dir("all", seed)[0] / run_dir("all", seed)[1], full)
        rows.append(row("all", seed, full, test_acc, walls["all"]))
        for m in args.flat:
            flat = tables[f"flat{m}"]
            rows.append(row(f"stop_when_flat {m}", seed, flat, test_acc, walls[f"flat{m}"], m))
            # the real stopped run ran the full run's first trials, as many as the replay says
            agree.append(searched(flat) == searched(full)[:len(flat)]
                         and len(flat) == stop_point(finished, m, at_least))
        for m in args.replay:
            rows.append(row(f"replayed {m}", seed, full.iloc[:stop_point(finished, m, at_least)], test_acc, m=m))
        for m in args.replay:   # the first round's rule, for comparison
            rows.append(row(f"replayed {m}, old rule", seed, full.iloc[:stop_point(finished, m, at_least, True)],
                            test_acc, m=m))

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
    print(f"\nreplay agrees with the real stopped run (same first trials, same stop): {sum(agree)}/{len(agree)} runs; "
          f"{time.time() - began:.0f} s in all; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
