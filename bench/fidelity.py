"""Does ASHA counting seconds of training (search.fidelity: time) hand over better models at a fixed wall budget?

    python bench/fidelity.py                  # 3 seeds x 2 arms, 5 min each, the two arms of a seed side by side

Task: the objects photos of bench/objects.py (6 classes, --train / --val photos per class), the CNN from
scratch, the space of bench/search_quality.py with image_size one of --sizes (16 or 48: a 48 px epoch costs
~9x a 16 px one). Arms: TPE+ASHA with fidelity epochs (the default) and fidelity time, the same seed,
the same --budget, one trial at a time each; the two arms of a seed run at the same time, so that both see
the same load on a shared machine. Judged by the held-out test accuracy (1,200 photos) of the trial each
hands over (its best best_val_acc, as the summary and tune.best pick it).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from objects import make_objects  # noqa: E402
from search_quality import OBJECT_SPACE, ROOT, handed_over, markdown, test_accuracy, trials_in_order  # noqa: E402



def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", default="5m", help="each search's --time-budget")
    p.add_argument("--samples", type=int, default=16, help="search.samples (the time rungs are placed from it)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--sizes", type=int, nargs=2, default=[16, 48], help="the two image sizes of the space")
    p.add_argument("--train", type=int, default=100, help="training photos per class")
    p.add_argument("--val", type=int, default=30, help="validation photos per class")
    p.add_argument("--out", default=str(ROOT / "outputs" / "fidelity"))
    args = p.parse_args()
    out = Path(args.out)
    cache = out / "cache"
    env = {**os.environ, "DOGS_CACHE": str(cache), "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    task, holdout = make_objects(out / "data", train=args.train, val=args.val, test=200, size=max(args.sizes))
    space = out / "space.yaml"
    space.write_text(OBJECT_SPACE.replace("image_size: 16", f"image_size: {{{{choice: {args.sizes}}}}}").format(
        samples=args.samples, epochs=args.epochs, grace=1))
    print(f"# fidelity — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start; {args.seeds} seeds, budget {args.budget}", flush=True)

    # per seed, both arms at once
    rows = []
    for seed in range(args.seeds):
        procs = {}
        for fidelity in ("epochs", "time"):
            name = f"{fidelity}-s{seed}"
            if not Path(out, "runs", name, "trials.csv").is_file():
                cmd = [sys.executable, "-m", "tune.search", "--space", str(space), "--data", str(task), "--storage",
                       str(out / "runs"), "--name", name, "--seed", str(seed), "--fidelity", fidelity,
                       "--time-budget", args.budget]
                procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(out / f"{name}.log", "w"),
                                               stderr=subprocess.STDOUT)
        start = time.time()
        for name, proc in procs.items():
            if proc.wait() != 0:
                raise SystemExit(f"{name} exited {proc.returncode}; see {out / f'{name}.log'}")
        print(f"  seed {seed}: {time.time() - start:.0f} s", flush=True)
        for fidelity in ("epochs", "time"):
            table = trials_in_order(out / "runs" / f"{fidelity}-s{seed}")
            sizes = pd.Series([json.loads(Path(p, "params.json").read_text())["image_size"] for p in table.path])
            pick = handed_over(table)
            rows.append({"fidelity": fidelity, "seed": seed, "trials": len(table), "trial_epochs": int(table.epochs.sum()),
                         "trials_large": int((sizes == max(args.sizes)).sum()),
                         "epochs_large": int(table.epochs[sizes.values == max(args.sizes)].sum()),
                         "best_val": pick.best_val_acc, "picked_px": int(sizes[pick.name]),
                         "test_acc": test_accuracy(pick.checkpoint, holdout, cache)})
    per_seed = pd.DataFrame(rows)
    per_seed.to_csv(out / "per_seed.csv", index=False)
    summary = per_seed.groupby("fidelity").agg(trials=("trials", "mean"), trial_epochs=("trial_epochs", "mean"),
                                               trials_large=("trials_large", "mean"), epochs_large=("epochs_large", "mean"),
                                               best_val=("best_val", "mean"), test_acc=("test_acc", "mean"),
                                               test_acc_sd=("test_acc", "std")).reset_index()
    print(markdown(summary) + "\n\nper seed:\n" + markdown(per_seed))


if __name__ == "__main__":
    main()
