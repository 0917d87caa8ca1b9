"""The distributions of a space's params and the one walk over them: what a trial draws, and how Optuna draws it.

`assign` walks a space's params in order (a condition decides which exist); Optuna's define-by-run
(`define_by_run`, via `optuna_space`) and the combination check (tune.combinations) both use it.
"""
import functools
import math

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
    """The define-by-run function of a space (picklable): tune.searcher calls it with each new Optuna trial."""
    return functools.partial(define_by_run, space["params"])


def highest(kind, args):
    """The largest value a range distribution can draw."""
    if kind in ("randint", "lograndint"):
        return args[1] - 1
    if kind in ("quniform", "qrandint"):
        return int(_top(args)) if kind == "qrandint" else _top(args)
    return args[1]
