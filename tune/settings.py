"""A search space's `search:` section: its settings, each checked like a dogs.config key, and durations.

tune.spaces checks a file's settings with check_settings; tune.spaces makes each setting's command-line flag from
its entry here (type, choices, help).
"""
import re

from dogs.config import SCHEMA, SEEDS, Key, Range, metric_mode_problem, natural_mode, problem
from dogs.errors import SpaceError
from dogs.uncertainty import has_interval

MAX_SAMPLES = 10_000
SAMPLERS = ("tpe", "random", "qmc", "gp")     # Optuna's samplers a search can use (tune.study_searcher makes them)
SCHEDULERS = ("asha", "fifo")
FIDELITIES = ("epochs", "time")               # what ASHA's rungs count: epochs, or seconds of training (time_total_s)

# search settings, checked like config keys: name -> Key(default, type, allowed, help, and what tune.search's command
# line does with it: smoke, flag_note, resource, why_fixed)
SETTINGS = {
    "samples": Key(10, int, Range(1, MAX_SAMPLES), "how many trials to run; at most 10000: every trial keeps a "
                   "folder of results and checkpoints and the driver holds them all in memory", smoke=4,
                   flag_note="With --resume: more than the saved samples extends the search by the missing trials, "
                             "on its study"),
    "epochs": Key(10, int, Range(1), "each trial's epoch budget = ASHA's max_t", smoke=2,
                  why_fixed="ASHA's rungs and the finished trials were set by the saved epochs; extend with a larger "
                            "--samples, or start a new search for more epochs"),
    "grace_period": Key(1, int, Range(1), "epochs every trial gets before ASHA may stop it; at most epochs", smoke=1),
    "reduction_factor": Key(3, float, Range(1, low_open=True), "ASHA keeps 1/reduction_factor of the trials at each rung"),
    "metric": SCHEMA["metric"],
    "mode": SCHEMA["mode"],
    "sampler": Key("tpe", str, SAMPLERS, "Optuna sampler that proposes each trial: tpe (learns from complete and "
                   "stopped-early trials), random, qmc (quasi-random, space-filling), gp (Gaussian process; learns "
                   "from complete trials only)"),
    "scheduler": Key("asha", str, SCHEDULERS, "asha = stop weak trials early (grace_period, reduction_factor); "
                     "fifo = every trial runs all its epochs"),
    "fidelity": Key("epochs", str, FIDELITIES, "what ASHA's rungs count: epochs, or seconds of training (time: "
                    "cheap and costly configurations compared at equal cost; needs a time_budget, from which the "
                    "rungs are placed)"),
    "seed": Key(0, int | None, SEEDS, "seeds the sampler: one trial at a time, the same file proposes the same configurations; with several at once, later proposals and ASHA's stops depend on the order results arrive"),
    "cpus_per_trial": Key(1, float, Range(0, low_open=True), "CPUs each trial holds", resource=True),
    "gpus_per_trial": Key(0, float, Range(0), "GPUs each trial holds; fractions share a GPU, 0.25 = four trials per GPU",
                          resource=True),
    "max_concurrent": Key(None, int | None, Range(1), "most trials at once; null = as many as the resources allow",
                          resource=True),
    "max_failures": Key(2, int, Range(0), "retries of an errored trial from its last checkpoint"),
    "holdout": Key(0.0, float, Range(0, 0.9), "fraction of Validation held out from the search (stratified, "
                   "seeded): trials are scored, stopped and proposed by the rest; tune.best --retrain --top compares "
                   "the top configurations on the held-out part; 0 = off"),
    "stop_when_flat": Key(None, int | None, Range(1), "end the search once this many finished trials in a row, each "
                          "given the epochs the best took to its best (or all its own), could not beat the best "
                          "trial's 95% interval, after the sampler's start-up trials (tune.ray_tuner; needs a "
                          "metric with an interval: an accuracy or macro-F1); null = run every trial"),
    "time_budget": Key(None, str | None, None, "wall time after which the search stops cleanly, like Ctrl-C "
                       "(--resume continues it), e.g. 90s, 30m, 2h, 1h30m; null = none",
                       flag_note="With --resume: this session's budget instead of the saved one ('none': no budget)"),
}
DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*([smhd])")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_BUDGET = 365 * 86400   # a year; longer is a typo (and past what a thread can wait for)
DURATION_RULE = ("allowed: a positive duration like 90s, 30m, 2h or 1h30m (units s, m, h, d), a number of seconds "
                 "like 90, at most 365d")


def seconds_of(text):
    """'1h30m' -> 5400.0, '90' -> 90.0 (a plain number: seconds); None when it is not a duration."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(?:\.\d*)?", text):
        text += "s"
    parts = DURATION.findall(text)
    if not parts or "".join(DURATION.sub("", text).split()):
        return None
    return sum(float(number) * SECONDS[unit] for number, unit in parts)


def parse_duration(text):
    """A time budget in seconds; None when it is not a positive duration of at most MAX_BUDGET."""
    seconds = seconds_of(text)
    return seconds if seconds is not None and 0 < seconds <= MAX_BUDGET else None


def duration_problem(text):
    """Why `text` is not a time budget (what is wrong, what is allowed), or None."""
    if parse_duration(text) is not None:
        return None
    shown = repr(text) if len(str(text)) <= 40 else f"{str(text)[:40]!r}..."
    seconds = seconds_of(text)
    wrong = "is not a duration" if seconds is None else "is longer than 365d" if seconds > 0 else "is not positive"
    return f"{shown} {wrong}; {DURATION_RULE}"


def asha_rungs(search, slots):
    """ASHA's (time_attr, grace_period, max_t). fidelity epochs: epochs of training. fidelity time: seconds of
    training (Ray's time_total_s), so that a costly configuration is compared with cheap ones at equal cost:
    a nominal epoch is the budget's trial-seconds (time_budget x slots) spread over samples x epochs, the grace
    period is grace_period nominal epochs, max_t the whole budget (a trial still ends after its epochs)."""
    if search["fidelity"] == "epochs":
        return "training_iteration", search["grace_period"], search["epochs"]
    budget = parse_duration(search["time_budget"])
    epoch_s = budget * slots / (search["samples"] * search["epochs"])
    return "time_total_s", min(search["grace_period"] * epoch_s, budget), budget


def check_settings(search, where):
    """Each setting against its Key, then the settings that depend on each other."""
    budget = search["time_budget"]
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):   # a plain number: seconds
        search["time_budget"] = budget = f"{budget:g}s"
    if budget is not None and (not isinstance(budget, str) or duration_problem(budget)):
        raise SpaceError(f"{where}: search.time_budget: {duration_problem(str(budget))}, or null")
    for key, spec in SETTINGS.items():
        why = problem(spec, search[key])
        if why:
            raise SpaceError(f"{where}: search.{key}: {why}")
    if search["fidelity"] == "time" and (search["scheduler"] != "asha" or budget is None):
        why = "scheduler fifo has no rungs" if search["scheduler"] != "asha" else "there is no time_budget to place them"
        raise SpaceError(f"{where}: search.fidelity: time places ASHA's rungs in seconds of training, but {why}; "
                         "allowed: fidelity time with scheduler asha and a time_budget (e.g. 30m), or fidelity epochs")
    if search["grace_period"] > search["epochs"]:
        raise SpaceError(f"{where}: search.grace_period: {search['grace_period']} > epochs {search['epochs']}; "
                         f"allowed: an integer in 1..epochs ({SETTINGS['grace_period'].help})")
    if search["mode"] is None:  # the metric's own direction
        search["mode"] = natural_mode(search["metric"])
    why = metric_mode_problem(search["metric"], search["mode"])
    if why:
        raise SpaceError(f"{where}: search.mode: {why}")
    if search["stop_when_flat"] is not None and not has_interval(search["metric"]):
        raise SpaceError(f"{where}: search.stop_when_flat: {search['stop_when_flat']} compares trials by the best's "
                         f"95% interval, but search.metric {search['metric']} is a loss, which has none; use an "
                         "accuracy or val_macro_f1 as the metric, or stop_when_flat null")
    if search["holdout"] and not search["metric"].startswith("val_"):
        raise SpaceError(f"{where}: search.holdout: {search['holdout']} holds out part of Validation, but "
                         f"search.metric {search['metric']} is a training score; use a val_* metric or holdout 0")
