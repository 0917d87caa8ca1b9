"""Search spaces as YAML files: load, validate, and turn into an Optuna define-by-run function.

A space file has two sections, and an optional third (docs/search.md has the full format):

    search:                 # how to search; every key is optional and overridable from the command line
      samples: 20
      epochs: 10            # every trial's epoch budget = ASHA's max_t
    params:                 # dogs config keys: a plain value is fixed, a mapping is searched
      model: {choice: [cnn, resnet18]}
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      unfreeze: {int: [0, 2], when: {model: resnet18}}   # exists only when model is resnet18
    first_trials:           # optional: trials to run before TPE proposes any
      - {model: cnn, lr: 1.0e-4}

Every value is checked against dogs.config's schema (fixed values, each choice, both bounds of every
range) before Ray starts, and so is every combination of values a trial can get that dogs.config would refuse
(fixed values, first trials, what sampling can reach: _check_combinations); a mistake raises SpaceError naming
the file, the key(s) and what is allowed.
The data folder is not part of a space: tune.search gives it (--data), and records it in its saved copy
of the space as a top-level `data:`. This module never imports torch.
"""
import functools
import itertools
import math
import random
import re
from pathlib import Path

import yaml

from dogs.config import (COMBINATION_KEYS, DEFAULTS, METRICS, SCHEMA, SEEDS, Key, Range, absolute_path, load_yaml,
                         metric_mode_problem, natural_mode, problem, resolve, value_type, yaml_problem)
from dogs.errors import ConfigError, SpaceError

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

MAX_SAMPLES = 10_000
COMBINATIONS_CHECKED = 4096   # beyond this many combinations to try, a seeded random sample of this many
SAMPLERS = ("tpe", "random", "qmc", "gp")     # Optuna's samplers a search can use (tune.searcher makes them)
SCHEDULERS = ("asha", "fifo")

# search settings, checked like config keys: name -> Key(default, type, allowed, help)
SETTINGS = {
    "samples": Key(10, int, Range(1, MAX_SAMPLES), "how many trials to run; at most 10000: every trial keeps a "
                   "folder of results and checkpoints and the driver holds them all in memory"),
    "epochs": Key(10, int, Range(1), "each trial's epoch budget = ASHA's max_t"),
    "grace_period": Key(1, int, Range(1), "epochs every trial gets before ASHA may stop it; at most epochs"),
    "reduction_factor": Key(3, float, Range(1, low_open=True), "ASHA keeps 1/reduction_factor of the trials at each rung"),
    "metric": SCHEMA["metric"],
    "mode": SCHEMA["mode"],
    "sampler": Key("tpe", str, SAMPLERS, "Optuna sampler that proposes each trial: tpe (learns from complete and "
                   "stopped-early trials), random, qmc (quasi-random, space-filling), gp (Gaussian process; learns "
                   "from complete trials only)"),
    "scheduler": Key("asha", str, SCHEDULERS, "asha = stop weak trials early (grace_period, reduction_factor); "
                     "fifo = every trial runs all its epochs"),
    "seed": Key(0, int | None, SEEDS, "seeds the sampler: one trial at a time, the same file proposes the same configurations; with several at once, later proposals and ASHA's stops depend on the order results arrive"),
    "cpus_per_trial": Key(1, float, Range(0, low_open=True), "CPUs each trial holds"),
    "gpus_per_trial": Key(0, float, Range(0), "GPUs each trial holds; fractions share a GPU, 0.25 = four trials per GPU"),
    "max_concurrent": Key(None, int | None, Range(1), "most trials at once; null = as many as the resources allow"),
    "max_failures": Key(2, int, Range(0), "retries of an errored trial from its last checkpoint"),
    "time_budget": Key(None, str | None, None, "wall time after which the search stops cleanly, like Ctrl-C "
                       "(--resume continues it), e.g. 90s, 30m, 2h, 1h30m; null = none"),
}
DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*([smhd])")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

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

# config keys the search sets for every trial itself: where to set each instead
NOT_IN_PARAMS = {key: SCHEMA[key].set_by_search for key in SCHEMA if SCHEMA[key].set_by_search}


SECTIONS = ("search", "params", "first_trials")


def find_space_file(name):
    """A path, or a file name in search_spaces/ (with or without .yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (SPACES_DIR / name, SPACES_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.name for p in SPACES_DIR.glob("*.yaml"))
    raise SpaceError(f"{name}: no such file, and not a file in {SPACES_DIR} (there: {known})")


_MISSING = object()


def load(path, overrides=None, sets=None, data=_MISSING):
    """Read, override and validate a space file -> {"file", "search", "params", "first_trials"}.

    overrides: search settings from the command line ({"samples": 4}); None values are ignored.
    sets: config values from the command line ({"model": "cnn"}) that replace the file's entry (fixed).
    data: the data folder every trial reads (None = the demo), given by tune.search; a space file may not
    name one then. Left out, a top-level `data:` of the file (a saved space) is used.
    """
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    except UnicodeDecodeError as err:
        raise SpaceError(f"{path}: not a text file in UTF-8 (byte {err.start}: {err.reason}); save it as UTF-8 YAML") from None
    return validate(raw, path, overrides, sets, data)


def validate(raw, path="<space>", overrides=None, sets=None, data=_MISSING):
    """The checked, normalised space of a parsed YAML document (see load)."""
    where = str(path)
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: the file must be a mapping with 'search' and 'params' sections")
    if "data" in raw and data is not _MISSING:
        raise SpaceError(f"{where}: data: not allowed in a space file; {NOT_IN_PARAMS['data']}")
    unknown = sorted(set(raw) - {*SECTIONS, "data"})
    if unknown:
        raise SpaceError(f"{where}: unknown top-level key(s) {unknown}; allowed: {list(SECTIONS)}")

    # search settings: file values, then command-line overrides, then checks
    search_raw = raw.get("search") or {}
    if not isinstance(search_raw, dict):
        raise SpaceError(f"{where}: search: must be a mapping of settings; allowed keys: {sorted(SETTINGS)}")
    search = {}
    for key, value in {**search_raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}.items():
        if key not in SETTINGS:
            raise SpaceError(f"{where}: search.{key}: unknown setting; allowed: {sorted(SETTINGS)}")
        search[key] = value
    search = {key: search.get(key, spec.default) for key, spec in SETTINGS.items()}
    _check_settings(search, where)

    # params: file entries in order, command-line --set values replace them as fixed values
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        raise SpaceError(f"{where}: params: must be a mapping of config keys; allowed keys: {sorted(DEFAULTS)}")
    if not params_raw:
        raise SpaceError(
            f"{where}: params: empty, so every trial would be the same config: {search['samples']} identical "
            f"trials of the defaults (a pretrained {DEFAULTS['model']}, lr {DEFAULTS['lr']:g}, batch_size "
            f"{DEFAULTS['batch_size']}). Add what to search under params, e.g. `lr: {{loguniform: [1.0e-4, 1.0e-2]}}` "
            "(examples in search_spaces/), or train one config with python -m dogs.train")
    for key in sets or {}:
        if key in NOT_IN_PARAMS:
            raise SpaceError(f"--set {key}: not a value to fix here; {NOT_IN_PARAMS[key]}")
    params_raw = {**params_raw, **(sets or {})}
    params = []
    for key, spec in params_raw.items():
        params.append(_check_param(key, spec, params, where, set(sets or {})))
    # weights files and cache_dir as absolute paths: the trials run in folders of their own
    for p in params:
        if p["name"] in ("weights", "cache_dir"):
            args = p["args"] if p["kind"] == "choice" else [p["args"]]
            args = [absolute_path(p["name"], a) for a in args]
            p["args"] = args if p["kind"] == "choice" else args[0]
    # the data folder: given by tune.search, or recorded in a saved space
    data = raw.get("data", _MISSING) if data is _MISSING else data
    if data is not _MISSING:
        _check_value("data", data, where)
        params.append({"name": "data", "kind": "fixed", "args": data, "when": {}})
    # first trials: values that --set fixed are dropped from them
    first_trials = raw.get("first_trials") or []
    if sets and isinstance(first_trials, list):
        first_trials = [{k: v for k, v in point.items() if k not in sets} if isinstance(point, dict) else point
                        for point in first_trials]
        first_trials = [point for point in first_trials if point != {}]
    first_trials = _check_first_trials(first_trials, params, where)
    space = {"file": where, "search": search, "params": params, "first_trials": first_trials}
    _check_combinations(space, where, set(sets or {}))
    return space


def _check_first_trials(points, params, where):
    """Trials to run before TPE proposes any: each a mapping of searched parameters to allowed values."""
    searched = {p["name"]: p for p in params if p["kind"] != "fixed"}
    if not isinstance(points, list) or not all(isinstance(point, dict) for point in points):
        raise SpaceError(f"{where}: first_trials: must be a list of mappings like [{{model: cnn}}]")
    for i, point in enumerate(points):
        for name, value in point.items():
            key = f"{where}: first_trials[{i}].{name}"
            if name not in searched:
                raise SpaceError(f"{key}: not a searched parameter; allowed: {sorted(searched)}")
            p = searched[name]
            if p["kind"] == "choice" and value not in p["args"]:
                raise SpaceError(f"{key}: {value!r} is not one of the choices {p['args']}")
            if p["kind"] != "choice":
                high = p["args"][1] - 1 if p["kind"] in ("randint", "lograndint") else p["args"][1]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not p["args"][0] <= value <= high:
                    raise SpaceError(f"{key}: {value!r}; allowed: a number in [{p['args'][0]}, {high}]")
    return points


def _check_combinations(space, where, set_keys=()):
    """Refuse a space that can give a trial values which are each allowed but cannot run together
    (dogs.config.combination_problem, what every trial's resolve() would raise): its fixed values (with --set),
    then each first trial, then any combination sampling can reach (every value of the keys the rules read, at
    the ends of their ranges: see _combinations)."""
    params, s = space["params"], space["search"]
    every_trial = {"epochs": s["epochs"], "metric": s["metric"], "mode": s["mode"]}   # the search sets these

    def problems(pins):
        out = []
        for chosen, fixed in _combinations(params, pins):
            try:
                resolve({**fixed, **chosen, **every_trial})
            except ConfigError as err:
                out.append((chosen, fixed, str(err)))
        return out

    def named(chosen, fixed, why, pins=(), entry=""):
        """(the keys the reason names, as `key=value (where from)`, the places they come from)."""
        values = {"epochs": (s["epochs"], "search.epochs"),
                  **{k: (v, "--set" if k in set_keys else "fixed") for k, v in fixed.items()},
                  **{k: (v, entry if k in pins else "sampled") for k, v in chosen.items()}}
        order = ["epochs", *(p["name"] for p in params if p["name"] in values)]   # as the space lists them
        keys = [k for k in order if k in COMBINATION_KEYS and re.search(rf"\b{k}\b", why)]
        keys = keys or [k for k in order if k in COMBINATION_KEYS]
        text = ", ".join(f"search.epochs={values[k][0]}" if values[k][1] == "search.epochs" else
                         f"{k}={values[k][0]!r} ({values[k][1]})" for k in keys)
        return text, {values[k][1] for k in keys}

    # the fixed values (and --set) alone, then each first trial, then what sampling can reach
    bad = [(*named(*b), b[2]) for b in problems({})]
    for text, origins, why in bad:
        if "sampled" not in origins:
            raise SpaceError(f"{where}: params: the fixed values {text} cannot run together: {why}")
    for i, point in enumerate(space["first_trials"]):
        entry = f"first_trials[{i}]"
        for chosen, fixed, why in problems(point):
            text, origins = named(chosen, fixed, why, point, entry)
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
    low, high = args[0], _highest(kind, args)
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


def _highest(kind, args):
    """The largest value a range distribution can draw."""
    if kind in ("randint", "lograndint"):
        return args[1] - 1
    if kind in ("quniform", "qrandint"):
        return int(_top(args)) if kind == "qrandint" else _top(args)
    return args[1]


def parse_duration(text):
    """'1h30m' -> 5400.0 seconds; None when it is not a positive duration with units s, m, h, d."""
    text = str(text).strip().lower()
    parts = DURATION.findall(text)
    if not parts or "".join(DURATION.sub("", text).split()):
        return None
    seconds = sum(float(number) * SECONDS[unit] for number, unit in parts)
    return seconds if seconds > 0 else None


def _check_settings(search, where):
    """Each setting against its Key, then the settings that depend on each other."""
    budget = search["time_budget"]
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):   # a plain number: seconds
        search["time_budget"] = budget = f"{budget:g}s"
    if budget is not None and (not isinstance(budget, str) or parse_duration(budget) is None):
        raise SpaceError(f"{where}: search.time_budget: {budget!r} is not a duration; allowed: a positive "
                         "duration like 90s, 30m, 2h or 1h30m, a number of seconds, or null")
    for key, spec in SETTINGS.items():
        why = problem(spec, search[key])
        if why:
            raise SpaceError(f"{where}: search.{key}: {why}")
    if search["grace_period"] > search["epochs"]:
        raise SpaceError(f"{where}: search.grace_period: {search['grace_period']} > epochs {search['epochs']}; "
                         f"allowed: an integer in 1..epochs ({SETTINGS['grace_period'].help})")
    if search["mode"] is None:  # the metric's own direction
        search["mode"] = natural_mode(search["metric"])
    why = metric_mode_problem(search["metric"], search["mode"])
    if why:
        raise SpaceError(f"{where}: search.mode: {why}")


def _check_value(key, value, where):
    """A single config value, as dogs.config's schema allows it."""
    why = problem(SCHEMA[key], value)
    if why:
        raise SpaceError(f"{where}: params.{key}: {why}")


def _check_param(key, spec, earlier, where, set_keys=()):
    """One params entry -> {"name", "kind", "args", "when"}; kind "fixed" for plain values."""
    if key not in DEFAULTS:
        raise SpaceError(f"{where}: params.{key}: unknown config key; allowed: {sorted(DEFAULTS)}")
    if key in NOT_IN_PARAMS:
        raise SpaceError(f"{where}: params.{key}: not allowed in params; {NOT_IN_PARAMS[key]}")
    if not isinstance(spec, dict):
        _check_value(key, spec, where)
        return {"name": key, "kind": "fixed", "args": spec, "when": {}}

    # exactly one distribution, plus an optional condition
    when = spec.get("when") or {}
    kinds = [k for k in spec if k != "when"]
    if len(kinds) != 1 or kinds[0] not in {*DISTRIBUTIONS, "value"}:
        raise SpaceError(f"{where}: params.{key}: {sorted(kinds)} is not one distribution; allowed: a plain "
                         f"value, or one of {sorted(DISTRIBUTIONS)} (or 'value' for a conditional fixed value), "
                         "plus an optional 'when'")
    kind, args = kinds[0], spec[kinds[0]]
    if kind == "value":
        _check_value(key, args, where)
        kind = "fixed"
    elif kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: params.{key}.choice: must be a non-empty list of values")
        for value in args:
            _check_value(key, value, where)
    else:
        args = _check_bounds(key, kind, args, where)
    return {"name": key, "kind": kind, "args": args, "when": _check_when(key, when, earlier, where, set_keys)}


def _check_bounds(key, kind, args, where):
    size = DISTRIBUTIONS[kind]
    names = "[low, high, q]" if size == 3 else "[low, high]"
    integer = kind in ("int", "randint", "qrandint", "lograndint")
    number_type = "integers" if integer else "numbers"
    if (not isinstance(args, list) or len(args) != size
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
            or integer and not all(isinstance(a, int) for a in args)):
        raise SpaceError(f"{where}: params.{key}.{kind}: {args!r}; allowed: {names} of {number_type}")
    if not all(math.isfinite(a) for a in args):
        raise SpaceError(f"{where}: params.{key}.{kind}: {args!r}; allowed: finite bounds (no .inf or .nan)")
    if kind in FLOAT_DISTRIBUTIONS and value_type(SCHEMA[key]) is int:
        raise SpaceError(f"{where}: params.{key}.{kind}: {key} is an integer and {kind} draws floats; allowed: "
                         "int, randint, qrandint, lograndint or choice")
    low, high = args[0], args[1]
    if not low < high:
        raise SpaceError(f"{where}: params.{key}.{kind}: low {low} >= high {high}; allowed: low < high")
    if kind in ("loguniform", "lograndint") and low <= 0:
        raise SpaceError(f"{where}: params.{key}.{kind}: log-scale bounds must be > 0, got low {low}")
    if size == 3 and args[2] <= 0:
        raise SpaceError(f"{where}: params.{key}.{kind}: step q must be > 0, got {args[2]}")
    for bound in (low, high - 1 if kind in ("randint", "lograndint") else high):
        _check_value(key, bound, where)
    return list(args)


def _check_when(key, when, earlier, where, set_keys=()):
    """{"model": ["resnet18"]}: each named parameter must be declared above and the values possible.

    A condition on a value fixed by --set may be impossible: the parameter then simply never exists. Such a
    condition keeps only its possible values (maybe none), so that the saved space reads back (tune.best, --resume).
    """
    if not isinstance(when, dict):
        raise SpaceError(f"{where}: params.{key}.when: must be a mapping like {{model: [resnet18, resnet34]}}")
    declared = {p["name"]: p for p in earlier}
    out = {}
    for name, values in when.items():
        if name not in declared:
            raise SpaceError(f"{where}: params.{key}.when: condition on unknown parameter {name!r}; allowed: "
                             f"parameters declared above it in params: {sorted(declared)}")
        values = values if isinstance(values, list) else [values]
        parent = declared[name]
        possible = possible_values(parent)
        if possible is not None and name not in set_keys:
            impossible = [v for v in values if v not in possible]
            if impossible:
                raise SpaceError(f"{where}: params.{key}.when.{name}: {impossible} can never happen; "
                                 f"allowed: values of {name}: {possible}")
        if possible is not None and name in set_keys:
            values = [v for v in values if v in possible]
        out[name] = values
    return out


def possible_values(entry):
    """Every value a params entry can take: its choices, or its fixed value; None for a range."""
    return entry["args"] if entry["kind"] == "choice" else [entry["args"]] if entry["kind"] == "fixed" else None


def searched_names(space):
    """Names of the parameters that vary between trials."""
    return [p["name"] for p in space["params"] if p["kind"] != "fixed"]


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


def to_yaml(space):
    """The normalised space as YAML (saved in the experiment folder, read back by --resume and tune.best).

    The data folder the search was given is recorded as a top-level `data:` (a space file may not set it).
    """
    doc, params = {"search": space["search"]}, {}
    for p in space["params"]:
        if p["name"] == "data":
            doc["data"] = p["args"]
            continue
        entry = p["args"] if p["kind"] == "fixed" and not p["when"] else {
            ("value" if p["kind"] == "fixed" else p["kind"]): p["args"]}
        if p["when"]:
            entry["when"] = p["when"]
        params[p["name"]] = entry
    doc["params"] = params
    if space["first_trials"]:
        doc["first_trials"] = space["first_trials"]
    return yaml.safe_dump(doc, sort_keys=False)
