"""How long a search will take, said before it starts: its epochs at the seconds per epoch this machine measured in
an earlier search of the same space and data (kept in the cache folder, `epoch-times.json`), at most its time budget.

    Searching 6 trials x 40 epochs, 2 at a time; results in runs/x: about 1h20m (240 epochs at most) at 40.0 s per
    trial-epoch (measured here on 2026-12-06 in a search of this space and data); the time budget 10m ends it sooner

Without a measurement yet the line says so, and the progress line estimates from the first epoch (tune.progress).
"""
import hashlib
import json
from datetime import date

from dogs.cache import cache_root
from dogs.files import atomic_path
from tune.progress import duration, time_left

FILENAME = "epoch-times.json"


def space_key(space):
    """What sets an epoch's length: the params (data, model, sizes, ranges) and each trial's CPUs and GPUs."""
    s = space["search"]
    what = {"params": space["params"], "cpus": s["cpus_per_trial"], "gpus": s["gpus_per_trial"],
            "holdout": s["holdout"]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def search_seconds(samples, epochs, slots, epoch_s, budget_s=None):
    """The most a search takes: every trial's every epoch, `slots` at a time, at most the budget (ASHA may stop
    trials sooner)."""
    return time_left(samples * epochs * epoch_s / max(1, slots), budget_s)


def measured(space):
    """{"epoch_s", "on"} of an earlier search of this space and data here, or None."""
    try:
        return json.loads((cache_root() / FILENAME).read_text()).get(space_key(space))
    except (OSError, ValueError, AttributeError):   # none yet, or unreadable: no measurement
        return None


def record(space, table):
    """Keep this search's seconds per trial-epoch (its trials' own time over their epochs) for the next plan line;
    nothing when no epoch ran or the cache folder cannot be written (the next plan says it has no measurement)."""
    epochs = table.epochs.fillna(0).sum() if len(table) else 0
    if not epochs:
        return
    path = cache_root() / FILENAME
    try:
        times = json.loads(path.read_text()) if path.exists() else {}
        times[space_key(space)] = {"epoch_s": float(table.time_s.fillna(0).sum() / epochs), "on": str(date.today())}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(times, indent=1, sort_keys=True))
    except (OSError, ValueError, AttributeError):   # the estimate is a courtesy: the search's results are saved
        pass


def plan_line(space, slots, exp_dir, budget_s=None):
    """The one line said before a search starts: what it runs, where, and about how long."""
    s = space["search"]
    text = f"Searching {s['samples']} trials x {s['epochs']} epochs, {slots} at a time; results in {exp_dir}: "
    return text + about(space, s["samples"] * s["epochs"], slots, budget_s, s["time_budget"])


def about(space, epochs, slots, budget_s=None, budget=None):
    """How long `epochs` trial-epochs of this space and data take here, `slots` at a time, at most the time budget
    (`budget_s` seconds, said as `budget`); or that there is no measurement yet. The plan lines of a search and of a
    re-evaluation (tune.reevaluate) end with it."""
    seen = measured(space)
    if not seen:
        text = ("no measurement yet of this space and data on this machine (the progress line estimates from the "
                "first epoch)")
        return text + (f"; at most the time budget {budget} and an epoch" if budget_s else "")
    total = epochs * seen["epoch_s"] / max(1, slots)
    text = (f"about {duration(time_left(total, budget_s))} ({epochs} epochs at most) at {seen['epoch_s']:.1f} s per "
            f"trial-epoch (measured here on {seen['on']} in a search of this space and data)")
    return text + (f"; the time budget {budget} ends it sooner" if budget_s and budget_s < total else "")
