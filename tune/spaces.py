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

Everything is checked before Ray starts; a mistake raises SpaceError naming the file, the key and
what is allowed.
"""
import functools
import math
import re
from pathlib import Path

import yaml

from dogs.config import DEFAULTS, resolve

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

METRICS = ("val_acc", "best_val_acc", "val_loss", "train_loss", "train_acc")

# search settings: name -> (default, allowed types, what is allowed)
SETTINGS = {
    "samples": (10, (int,), "an integer >= 1: how many trials to run"),
    "epochs": (10, (int,), "an integer >= 1: each trial's epoch budget (ASHA's max_t)"),
    "grace_period": (1, (int,), "an integer >= 1 and <= epochs: epochs every trial gets before ASHA may stop it"),
    "reduction_factor": (3, (int, float), "a number > 1: ASHA keeps 1/reduction_factor of the trials at each rung"),
    "metric": ("val_acc", (str,), f"one of {list(METRICS)}"),
    "mode": ("max", (str,), "'max' or 'min'"),
    "seed": (0, (int, type(None)), "an integer (seeds Optuna's TPE sampler) or null"),
    "cpus_per_trial": (1, (int, float), "a number > 0"),
    "gpus_per_trial": (0, (int, float), "a number >= 0; fractions share a GPU (0.25 = four trials per GPU)"),
    "max_concurrent": (None, (int, type(None)), "an integer >= 1, or null for as many as the resources allow"),
    "max_failures": (2, (int,), "an integer >= 0: retries of an errored trial from its last checkpoint"),
}

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
NOT_IN_PARAMS = {"epochs": "set search.epochs instead (it is ASHA's max_t as well)"}


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but `1e-4` is a float (plain YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


SECTIONS = ("search", "params", "first_trials")


class SpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the key."""


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


def load(path, overrides=None, sets=None):
    """Read, override and validate a space file -> {"file", "search", "params"}.

    overrides: search settings from the command line ({"samples": 4}); None values are ignored.
    sets: config values from the command line ({"model": "cnn"}) that replace the file's entry (fixed).
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {err}") from None
    return validate(raw, path, overrides, sets)


def validate(raw, path="<space>", overrides=None, sets=None):
    """The checked, normalised space of a parsed YAML document (see load)."""
    where = str(path)
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: the file must be a mapping with 'search' and 'params' sections")
    unknown = sorted(set(raw) - set(SECTIONS))
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
    search = {key: search.get(key, default) for key, (default, _, _) in SETTINGS.items()}
    _check_settings(search, where)

    # params: file entries in order, command-line --set values replace them as fixed values
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        raise SpaceError(f"{where}: params: must be a mapping of config keys; allowed keys: {sorted(DEFAULTS)}")
    params_raw = dict(params_raw)
    for key, value in (sets or {}).items():
        params_raw[key] = value
    params = []
    for key, spec in params_raw.items():
        params.append(_check_param(key, spec, params, where, set(sets or {})))
    # first trials: values that --set fixed are dropped from them
    first_trials = raw.get("first_trials") or []
    if sets and isinstance(first_trials, list):
        first_trials = [{k: v for k, v in point.items() if k not in sets} if isinstance(point, dict) else point
                        for point in first_trials]
        first_trials = [point for point in first_trials if point != {}]
    first_trials = _check_first_trials(first_trials, params, where)
    return {"file": where, "search": search, "params": params, "first_trials": first_trials}


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


def _check_settings(search, where):
    for key, (_, types, allowed) in SETTINGS.items():
        value = search[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise SpaceError(f"{where}: search.{key}: {value!r} has the wrong type; allowed: {allowed}")
    positive_ints = ("samples", "epochs", "grace_period")
    for key in positive_ints:
        if search[key] < 1:
            raise SpaceError(f"{where}: search.{key}: {search[key]!r}; allowed: {SETTINGS[key][2]}")
    if search["grace_period"] > search["epochs"]:
        raise SpaceError(f"{where}: search.grace_period: {search['grace_period']} > epochs {search['epochs']}; "
                         f"allowed: {SETTINGS['grace_period'][2]}")
    checks = {
        "reduction_factor": search["reduction_factor"] > 1,
        "metric": search["metric"] in METRICS,
        "mode": search["mode"] in ("max", "min"),
        "cpus_per_trial": search["cpus_per_trial"] > 0,
        "gpus_per_trial": search["gpus_per_trial"] >= 0,
        "max_concurrent": search["max_concurrent"] is None or search["max_concurrent"] >= 1,
        "max_failures": search["max_failures"] >= 0,
    }
    for key, ok in checks.items():
        if not ok:
            raise SpaceError(f"{where}: search.{key}: {search[key]!r}; allowed: {SETTINGS[key][2]}")


def _check_value(key, value, where):
    """A single config value: right type for the key and accepted by dogs.config.resolve."""
    default = DEFAULTS[key]
    if default is None or key == "seed":
        ok = value is None or isinstance(value, (str, int)) and not isinstance(value, bool)
        allowed = "a string or null" if key != "seed" else "an integer or null"
    elif isinstance(default, bool):
        ok, allowed = isinstance(value, bool), "true or false"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        allowed = "a number"
    elif isinstance(default, int):
        ok, allowed = isinstance(value, int) and not isinstance(value, bool), "an integer"
    else:
        ok, allowed = isinstance(value, str), "a string"
    if not ok:
        raise SpaceError(f"{where}: params.{key}: {value!r} has the wrong type; allowed: {allowed}")
    try:
        resolve({key: value})
    except (KeyError, ValueError) as err:
        raise SpaceError(f"{where}: params.{key}: {err}") from None


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

    A condition on a value fixed by --set may be impossible: the parameter then simply never exists.
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
        possible = parent["args"] if parent["kind"] == "choice" else [parent["args"]] if parent["kind"] == "fixed" else None
        if possible is not None and name not in set_keys:
            impossible = [v for v in values if v not in possible]
            if impossible:
                raise SpaceError(f"{where}: params.{key}.when.{name}: {impossible} can never happen; "
                                 f"allowed: values of {name}: {possible}")
        out[name] = values
    return out


def searched_names(space):
    """Names of the parameters that vary between trials."""
    return [p["name"] for p in space["params"] if p["kind"] != "fixed"]


def define_by_run(params, trial):
    """Optuna define-by-run: suggest each parameter whose condition holds; return the fixed ones.

    Module-level (with functools.partial) so that the searcher pickles for --resume.
    """
    chosen, fixed = {}, {}
    for p in params:
        # skip a parameter whose condition does not hold for this trial
        if any({**chosen, **fixed}.get(name, _MISSING) not in values for name, values in p["when"].items()):
            continue
        name, kind, args = p["name"], p["kind"], p["args"]
        if kind == "fixed":
            fixed[name] = args
        elif kind == "choice":
            chosen[name] = trial.suggest_categorical(name, args)
        elif kind == "uniform":
            chosen[name] = trial.suggest_float(name, args[0], args[1])
        elif kind == "quniform":
            chosen[name] = trial.suggest_float(name, args[0], _top(args), step=args[2])
        elif kind == "loguniform":
            chosen[name] = trial.suggest_float(name, args[0], args[1], log=True)
        elif kind == "int":
            chosen[name] = trial.suggest_int(name, args[0], args[1])
        elif kind == "randint":
            chosen[name] = trial.suggest_int(name, args[0], args[1] - 1)
        elif kind == "qrandint":
            chosen[name] = trial.suggest_int(name, args[0], int(_top(args)), step=args[2])
        elif kind == "lograndint":
            chosen[name] = trial.suggest_int(name, args[0], args[1] - 1, log=True)
    return fixed


_MISSING = object()


def _top(args):
    """The highest multiple of q above low that is <= high (Optuna wants high on the grid)."""
    low, high, q = args
    return round(low + math.floor(round((high - low) / q, 9)) * q, 10)


def optuna_space(space):
    """The define-by-run function for OptunaSearch (picklable)."""
    return functools.partial(define_by_run, space["params"])


def to_yaml(space):
    """The normalised space as YAML (saved in the experiment folder, read back by --resume and tune.best)."""
    params = {}
    for p in space["params"]:
        entry = p["args"] if p["kind"] == "fixed" and not p["when"] else {
            ("value" if p["kind"] == "fixed" else p["kind"]): p["args"]}
        if p["when"]:
            entry["when"] = p["when"]
        params[p["name"]] = entry
    doc = {"search": space["search"], "params": params}
    if space["first_trials"]:
        doc["first_trials"] = space["first_trials"]
    return yaml.safe_dump(doc, sort_keys=False)
