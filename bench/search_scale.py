"""Search throughput and scale: what a search costs around its trials, as the number of trials N grows.

    python bench/search_scale.py                       # N = 8, 32, 128 cheap trials + 32 frozen, this tree
    python bench/search_scale.py --before 87a903a      # the same for a git revision too, side by side
    python bench/search_scale.py --big                 # also N = 512 and 1,000 cheap trials
    python bench/search_scale.py --n 32 --frozen 0 --no-optuna

cheap trial   cnn, 8 px, 2 epochs on the digits demo (TPE over lr and head_width; grace period 2: no early stop)
frozen trial  resnet18 with random weights (weights=none), 32 px, feature cache on, 2 epochs (TPE over the head)

Every search is `python -m tune.search` as its own driver process (a local Ray, default settings), run from
the tree under test; the decode and feature caches are built once before any timing (one shared
$DOGS_CACHE), so what is measured is the search around warm trials. With --before, each row runs for the
revision, then for this tree, one after the other (same load, same caches). Per search it prints:

  wall          the driver process, start to exit (Python + Ray start, the fit, the summary, shutdown)
  fit           the wall time the summary prints (tuner.fit() only)
  marginal      (wall - wall of the previous N) / (N - previous N): what one more trial costs; the same for
                the driver's CPU (marginal CPU): its cost per trial, without Ray's start and shutdown
  own           a trial's own time (time_total_s, its set-up included), mean over trials
  conc mean     the trials' own time (sum of time_total_s) / the span from the first start to the last end
  conc peak     most trials whose [start, end] overlap (from result.json: end = timestamp, start = end - total)
  set-up        median over trials of (first iteration - second iteration): a trial's set-up time
  driver CPU    user + system CPU seconds of the driver process (getrusage), and per trial
  driver RSS    its peak resident memory
  disk, files   the experiment folder, per trial
  best          `python -m tune.best --experiment X` wall
  load          1-minute load average before -> after (the machine is shared: read ratios, not absolutes)

and the anchor: an in-process Optuna TPE loop over `dogs.engine.Run` (no Ray, one process, same space,
ask/tell, one torch thread as each trial of the search has), its loop wall (imports excluded) and per trial.
"""
# ----------------------------------------------------------------------------- setup
import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHEAP = """
search: {{samples: {n}, epochs: 2, grace_period: 2, seed: 0}}
params:
  model: cnn
  image_size: 8
  batch_size: 64
  lr: {{loguniform: [1.0e-4, 1.0e-2]}}
  head_width: {{choice: [0, 64, 128]}}
"""
FROZEN = """
search: {{samples: {n}, epochs: 2, grace_period: 2, seed: 0}}
params:
  model: resnet18
  weights: none
  unfreeze: 0
  image_size: 32
  feature_cache: true
  batch_size: 64
  lr: {{loguniform: [1.0e-4, 1.0e-2]}}
  head_width: {{choice: [0, 256]}}
"""

# the driver: tune.search's main, then its own CPU and peak RSS (getrusage of this process, all its threads)
DRIVER = textwrap.dedent("""
    import json, resource, sys
    out, argv = sys.argv[1], sys.argv[2:]
    from tune.search import main
    code = main(argv)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    json.dump({"rc": code, "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}, open(out, "w"))
    sys.exit(code)
""")

# the anchor: Optuna ask/tell over dogs.engine.Run in one process, the same space and define-by-run
OPTUNA_LOOP = textwrap.dedent("""
    import json, sys, time
    import optuna
    import torch
    torch.set_num_threads(1)   # as a trial of the search gets it (cpus_per_trial 1: Ray sets OMP_NUM_THREADS=1)
    from dogs.engine import Run
    from tune import space_values, spaces
    space = spaces.load(sys.argv[1])
    s = space["search"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=s["seed"]))
    start = time.perf_counter()
    for _ in range(s["samples"]):
        trial = study.ask()
        fixed = space_values.define_by_run(space["params"], trial)
        run = Run({**fixed, **trial.params, "epochs": s["epochs"], "metric": s["metric"], "mode": s["mode"]},
                  log_fn=lambda m: None)
        for m in run.epochs():
            trial.report(m["best_val_acc"], m["epoch"])
        study.tell(trial, run.best)
    print(json.dumps({"wall_s": time.perf_counter() - start}))
""")


def load():
    return os.getloadavg()[0]


def hardware():
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else ""
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def checkout(rev, folder):
    """The tree of git revision `rev` in `folder` (git archive: no worktree registered)."""
    archive = subprocess.run(["git", "-C", str(HERE), "archive", rev], check=True, capture_output=True).stdout
    folder.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def env_for(tree, cache):
    return {**os.environ, "PYTHONPATH": str(tree), "DOGS_CACHE": str(cache), "RAY_AUTH_MODE": "disabled",
            "PYTHONUNBUFFERED": "1"}


# ----------------------------------------------------------------------------- one search
def trial_rows(exp_dir):
    """[[result rows] per trial] from each trial's result.json."""
    out = []
    for path in sorted(Path(exp_dir).glob("trial_*/result.json")):
        out.append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    return [rows for rows in out if rows]


def concurrency(trials):
    """(mean trials at once = their own time / the span from the first start to the last end, most at once);
    a trial runs from (end - its time_total_s) to end = its last report (reported_at, else Ray's whole-second
    timestamp: the revision before it has only that)."""
    spans = []
    for rows in trials:
        end = rows[-1].get("reported_at", rows[-1]["timestamp"])
        spans.append((end - rows[-1]["time_total_s"], end))
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    return sum(e - s for s, e in spans) / span, peak


def setup_s(trials):
    """Median of (first iteration - second iteration) over trials with two: the set-up before epoch 1."""
    diffs = [rows[0]["time_this_iter_s"] - rows[1]["time_this_iter_s"] for rows in trials if len(rows) > 1]
    return statistics.median(diffs) if diffs else float("nan")


def disk(folder):
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6, len(files)


def search(tree, cache, work, kind, n):
    """One search of n trials of `kind`, driven from `tree`; returns its row."""
    space = work / f"{kind}-{n}.yaml"
    space.write_text((CHEAP if kind == "cheap" else FROZEN).format(n=n))
    storage, name, stats = work / "runs", f"{kind}-{n}", work / f"{kind}-{n}.json"
    before = load()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(stats), "--space", str(space), "--storage",
                           str(storage), "--name", name], cwd=tree, env=env_for(tree, cache),
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    (work / f"{kind}-{n}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"search {kind} N={n} in {tree} failed (rc {proc.returncode}): "
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
    driver = json.loads(stats.read_text())
    fit = next(float(line.split("wall time")[1].split()[0]) for line in proc.stdout.splitlines()
               if "wall time" in line)
    exp_dir = storage / name
    trials = trial_rows(exp_dir)
    mean, peak = concurrency(trials)
    mb, files = disk(exp_dir)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tune.best", "--experiment", str(exp_dir)], cwd=tree,
                   env=env_for(tree, cache), check=True, capture_output=True)
    best = time.perf_counter() - start
    own = sum(rows[-1]["time_total_s"] for rows in trials) / len(trials)
    return {"wall s": wall, "fit s": fit, "trials": len(trials), "own s/trial": own, "conc mean": mean,
            "conc peak": peak, "set-up s": setup_s(trials), "driver CPU s": driver["cpu_s"],
            "CPU/trial s": driver["cpu_s"] / n, "driver RSS MB": driver["rss_mb"], "disk MB/trial": mb / n,
            "files/trial": files / n, "best s": best, "load": f"{before:.1f}->{load():.1f}"}


def optuna_loop(tree, cache, work, kind, n):
    space = work / f"loop-{kind}-{n}.yaml"
    space.write_text((CHEAP if kind == "cheap" else FROZEN).format(n=n))
    before = load()
    proc = subprocess.run([sys.executable, "-c", OPTUNA_LOOP, str(space)], cwd=tree, env=env_for(tree, cache),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"optuna loop {kind} N={n} failed: {proc.stderr[-3000:]}")
    wall = json.loads(proc.stdout.strip().splitlines()[-1])["wall_s"]
    return {"wall s": wall, "fit s": wall, "trials": n, "per trial s": wall / n, "load": f"{before:.1f}->{load():.1f}"}


# ----------------------------------------------------------------------------- main
def fmt(value):
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1 else f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(rows):
    cols = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="*", default=[8, 32, 128], help="cheap-trial search sizes")
    p.add_argument("--big", action="store_true", help="also N = 512 and 1,000 cheap trials")
    p.add_argument("--frozen", type=int, nargs="*", default=[32], help="frozen-trial search sizes (0: none)")
    p.add_argument("--before", metavar="REV", help="also run git revision REV (e.g. 87a903a), side by side")
    p.add_argument("--no-optuna", action="store_true", help="skip the in-process Optuna loop")
    p.add_argument("--optuna-before", action="store_true", help="run the Optuna loop with --before's tree too "
                   "(default: with this tree only; it is the anchor this tree's search is compared with)")
    p.add_argument("--big-before", action="store_true", help="run N >= 512 with --before's tree too (slow)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (experiments, logs)")
    args = p.parse_args()
    ns = sorted(set(args.n + ([512, 1000] if args.big else [])))
    frozen = [n for n in args.frozen if n > 0]

    work = Path(tempfile.mkdtemp(prefix="search-scale-"))
    cache = work / "cache"
    trees = {"this tree": HERE}
    if args.before:
        trees = {args.before: checkout(args.before, work / "before"), "this tree": HERE}
    print(f"# bench/search_scale.py {' '.join(sys.argv[1:])}\n# {time.strftime('%Y-%m-%d %H:%M')}  {hardware()}"
          f"\n# load average {os.getloadavg()} at start; work folder {work}", flush=True)

    # warm caches: one Run of each kind builds the demo, the decode cache and the frozen features
    for kind in ["cheap"] + (["frozen"] if frozen else []):
        optuna_loop(HERE, cache, work, kind, 1)

    rows = []
    cases = [("cheap", n) for n in ns] + [("frozen", n) for n in frozen]
    for kind, n in cases:
        for label, tree in trees.items():
            folder = work / label.replace(" ", "-")
            folder.mkdir(parents=True, exist_ok=True)
            if label != "this tree" and n >= 512 and not args.big_before:
                continue
            if not args.no_optuna and n <= 128 and (label == "this tree" or args.optuna_before):
                row = optuna_loop(tree, cache, folder, kind, n)
                rows.append({"tree": label, "what": f"optuna loop, {kind}", "N": n, **row})
                print(f"  {label} optuna loop {kind} N={n}: {row['wall s']:.1f}s", flush=True)
            row = search(tree, cache, folder, kind, n)
            earlier = [r for r in rows if r["tree"] == label and r["what"] == f"tune.search, {kind}"]
            if earlier:
                more = n - earlier[-1]["N"]
                row = {**row, "marginal s/trial": (row["wall s"] - earlier[-1]["wall s"]) / more,
                       "marginal CPU s/trial": (row["driver CPU s"] - earlier[-1]["driver CPU s"]) / more}
            rows.append({"tree": label, "what": f"tune.search, {kind}", "N": n, **row})
            print(f"  {label} tune.search {kind} N={n}: {row['wall s']:.1f}s", flush=True)
    print(f"\n# load average {os.getloadavg()} at the end\n")
    print(table(rows))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
