"""The values a space can take: the distributions trials draw from, and the combinations refused before Ray starts.

The distributions of a space's params and the one walk over them: what a trial draws, and how Optuna draws it.

`assign` walks a space's params in order (a condition decides which exist); Optuna's define-by-run
(`define_by_run`, via `optuna_space`) and the combination check (tune.space_values) both use it.

The combination check of a space: values that are each allowed but cannot run together are refused before Ray
starts (what every trial's dogs.config.resolve would raise), for the fixed values, each first trial, and what
sampling can reach.
"""
import functools
import itertools
import math
import random

from dogs.config import COMBINATION_KEYS, DEFAULTS, combination_problem, resolve
from dogs.errors import ConfigError, SpaceError


_MISSING = object()

# distribution name -> number of list items it takes
DISTRIBUTIONS = {
    "choice": None,        # [a, b, c]          one of the listed values
    "uniform": 2,          # [low, high]        float, uniform
    "quniform": 3,         # [low, high, q]     float, uniform, a multiple of q above low
    "loguniform": 2,       # [low, high]        float, uniform in log space (low > 0)
    "int": 2,              # [low, high]        integer, both bounds included
    "randint": 2,          # [low, high]        integer, high excluded (like Ray's tune.randint)
    "qrandint": 3,         # [low, high, q]     integer, both bounds included, step q (like Ray's tune.qrandint)
    "lograndint": 2,       # [low, high]        integer, uniform in log space, high excluded (low > 0)
}
FLOAT_DISTRIBUTIONS = ("uniform", "quniform", "loguniform")


def assign(params, pick):
    """(chosen, fixed) of one trial: every parameter whose condition holds, in order; `pick(p)` gives a searched
    one's value. The one walk over a space: Optuna's define-by-run and the combination check both use it."""
    chosen, fixed = {}, {}
    for p in params:
        # skip a parameter whose condition does not hold for this trial
        if any({**chosen, **fixed}.get(name, _MISSING) not in values for name, values in p["when"].items()):
            continue
        if p["kind"] == "fixed":
            fixed[p["name"]] = p["args"]
        else:
            chosen[p["name"]] = pick(p)
    return chosen, fixed


def define_by_run(params, trial):
    """Optuna define-by-run: suggest each parameter whose condition holds; return the fixed ones.

    Module-level (with functools.partial) so that the searcher pickles for --resume.
    """
    return assign(params, functools.partial(suggest, trial))[1]


def suggest(trial, p):
    """One searched parameter's value, asked of an Optuna trial."""
    name, kind, args = p["name"], p["kind"], p["args"]
    if kind == "choice":
        return trial.suggest_categorical(name, args)
    if kind == "uniform":
        return trial.suggest_float(name, args[0], args[1])
    if kind == "quniform":
        return trial.suggest_float(name, args[0], _top(args), step=args[2])
    if kind == "loguniform":
        return trial.suggest_float(name, args[0], args[1], log=True)
    if kind == "int":
        return trial.suggest_int(name, args[0], args[1])
    if kind == "randint":
        return trial.suggest_int(name, args[0], args[1] - 1)
    if kind == "qrandint":
        return trial.suggest_int(name, args[0], int(_top(args)), step=args[2])
    if kind == "lograndint":
        return trial.suggest_int(name, args[0], args[1] - 1, log=True)
    raise ValueError(f"unknown distribution {kind!r}")


def _top(args):
    """The highest multiple of q above low that is <= high (Optuna wants high on the grid)."""
    low, high, q = args
    return round(low + math.floor(round((high - low) / q, 9)) * q, 10)


def optuna_space(space):
    """The define-by-run function of a space (picklable): tune.study_searcher calls it with each new Optuna trial."""
    return functools.partial(define_by_run, space["params"])


def highest(kind, args):
    """The largest value a range distribution can draw."""
    if kind in ("randint", "lograndint"):
        return args[1] - 1
    if kind in ("quniform", "qrandint"):
        return int(_top(args)) if kind == "qrandint" else _top(args)
    return args[1]


COMBINATIONS_CHECKED = 4096   # beyond this many combinations to try, a seeded random sample of this many


def check_combinations(space, where, set_keys=()):
    """Refuse a space that can give a trial values which are each allowed but cannot run together
    (dogs.config.combination_problem, what every trial's resolve() would raise): its fixed values (with --set),
    then each first trial, then any combination sampling can reach (every value of the keys the rules read, at
    the ends of their ranges: see _combinations)."""
    params, s = space["params"], space["search"]
    every_trial = {"epochs": s["epochs"], "metric": s["metric"], "mode": s["mode"],   # the search sets these
                   "holdout": s["holdout"]}

    def problems(pins):
        out = []
        for chosen, fixed in _combinations(params, pins):
            config = {**fixed, **chosen, **every_trial}
            try:
                resolve(config)
            except ConfigError as err:   # the keys: those the rule says it names
                rule = combination_problem({**DEFAULTS, **config})
                out.append((chosen, fixed, str(err), rule[1] if rule else ()))
        return out

    def named(chosen, fixed, names, pins=(), entry=""):
        """(the keys the rule names, as `key=value (where from)`, the places they come from)."""
        values = {"epochs": (s["epochs"], "search.epochs"),
                  **{k: (v, "--set" if k in set_keys else "fixed") for k, v in fixed.items()},
                  **{k: (v, entry if k in pins else "sampled") for k, v in chosen.items()}}
        order = ["epochs", *(p["name"] for p in params if p["name"] in values)]   # as the space lists them
        keys = [k for k in order if k in names]
        keys = keys or [k for k in order if k in COMBINATION_KEYS]
        text = ", ".join(f"search.epochs={values[k][0]}" if values[k][1] == "search.epochs" else
                         f"{k}={values[k][0]!r} ({values[k][1]})" for k in keys)
        return text, {values[k][1] for k in keys}

    # the fixed values (and --set) alone, then each first trial, then what sampling can reach
    bad = [(*named(chosen, fixed, names), why) for chosen, fixed, why, names in problems({})]
    for text, origins, why in bad:
        if "sampled" not in origins:
            raise SpaceError(f"{where}: params: the fixed values {text} cannot run together: {why}")
    for i, point in enumerate(space["first_trials"]):
        entry = f"first_trials[{i}]"
        for chosen, fixed, why, names in problems(point):
            text, origins = named(chosen, fixed, names, point, entry)
            if entry in origins:
                raise SpaceError(f"{where}: {entry} {point}: a trial with {text} cannot run: {why}; change the entry")
    for text, _, why in bad[:1]:
        raise SpaceError(f"{where}: params: a trial can draw {text}, which cannot run together: {why}; narrow "
                         "the range(s), or add a `when:` condition so that no trial draws it")


def _combinations(params, pins=None):
    """[(chosen, fixed)] of the trials to check: each searched parameter that combination_problem's keys read (or
    a condition of theirs names) takes each of its _ends, the others their first; `pins` ({name: value}, a first
    trial) fix some. Every such trial up to COMBINATIONS_CHECKED of them, else a seeded random sample of that many."""
    pins, keys = pins or {}, set(COMBINATION_KEYS)
    for p in reversed(params):   # conditions name parameters declared above: one pass from the bottom
        if p["name"] in keys:
            keys |= set(p["when"])

    def values(p):
        if p["name"] in pins:
            return [pins[p["name"]]]
        ends = _ends(p, params)
        return ends if p["name"] in keys else ends[:1]

    every = list(itertools.islice(_every(params, values), COMBINATIONS_CHECKED + 1))
    if len(every) <= COMBINATIONS_CHECKED:
        return every
    rng = random.Random(0)
    return [assign(params, lambda p: rng.choice(values(p))) for _ in range(COMBINATIONS_CHECKED)]


def _every(params, values):
    """Every (chosen, fixed) the walk gives when each searched parameter p takes each of values(p): depth first,
    replaying the walk with the choices made so far (a choice decides which parameters exist after it)."""
    path = []   # for each searched parameter the walk met, in order: the index of its value
    while True:
        sizes = []

        def pick(p):
            options = values(p)
            if len(sizes) == len(path):
                path.append(0)
            sizes.append(len(options))
            return options[path[len(sizes) - 1]]

        yield assign(params, pick)
        while path and path[-1] + 1 == sizes[len(path) - 1]:
            path.pop()
        if not path:
            return
        path[-1] += 1


def _ends(p, params):
    """The values of a searched parameter that the combination check tries: every choice; of a range, both ends,
    and each value a condition on it names with its neighbours (where the trials' parameters change)."""
    kind, args = p["kind"], p["args"]
    if kind == "choice":
        return list(args)
    low, high = args[0], highest(kind, args)
    step = args[2] if kind in ("quniform", "qrandint") else 1 if kind in ("int", "randint", "lograndint") else 0
    values = [low, high]
    for q in params:
        for v in q["when"].get(p["name"], []):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            for w in (v - step, v, v + step) if step else (v,):
                on_grid = kind not in ("quniform", "qrandint") or round((w - low) / step, 9).is_integer()
                if low <= w <= high and on_grid and w not in values:
                    values.append(w)
    return values
