"""Search spaces as YAML files: load, validate and save them (the file format; tune.space_values draws from them).

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
(fixed values, first trials, what sampling can reach: tune.space_values); a mistake raises SpaceError naming
the file, the key(s) and what is allowed.
The `search:` settings are checked by tune.settings, the distributions named in tune.space_values.
The data folder is not part of a space: tune.search gives it (--data), and records it in its saved copy
of the space as a top-level `data:`. This module never imports torch.

The command line of tune.search: its parser (the search-setting flags made from tune.settings.SETTINGS) and the
space it asks for.
"""
import argparse
import math
from pathlib import Path

import yaml

from dogs.cli import ArgumentParser
from dogs.config import (DEFAULTS, SCHEMA, absolute_path, did_you_mean, load_yaml, parse_sets, problem, value_type,
                         yaml_problem)
from dogs.errors import SpaceError
from tune import settings
from tune.settings import SETTINGS, check_settings
from tune.space_values import DISTRIBUTIONS, FLOAT_DISTRIBUTIONS, check_combinations
from tune.storage import DEFAULT_STORAGE


SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

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


def _search_settings(search_raw, overrides, where):
    """The search settings: file values, then command-line overrides, then checks."""
    if not isinstance(search_raw, dict):
        raise SpaceError(f"{where}: search: must be a mapping of settings; allowed keys: {sorted(SETTINGS)}")
    search = {}
    for key, value in {**search_raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}.items():
        if key not in SETTINGS:
            raise SpaceError(f"{where}: search.{key}: unknown setting{did_you_mean(key, SETTINGS)}; "
                             f"allowed: {sorted(SETTINGS)}")
        search[key] = value
    search = {key: search.get(key, spec.default) for key, spec in SETTINGS.items()}
    check_settings(search, where)
    return search


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

    search = _search_settings(raw.get("search") or {}, overrides, where)

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
    check_combinations(space, where, set(sets or {}))
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


def _check_value(key, value, where):
    """A single config value, as dogs.config's schema allows it."""
    why = problem(SCHEMA[key], value)
    if why:
        raise SpaceError(f"{where}: params.{key}: {why}")


def _check_param(key, spec, earlier, where, set_keys=()):
    """One params entry -> {"name", "kind", "args", "when"}; kind "fixed" for plain values."""
    if key not in DEFAULTS:
        raise SpaceError(f"{where}: params.{key}: unknown config key{did_you_mean(key, DEFAULTS)}; "
                         f"allowed: {sorted(DEFAULTS)}")
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


DESCRIPTION = "Hyper-parameter search: Optuna TPE proposes configs, ASHA stops the weak ones early, Ray Tune runs them."
NO_BUDGET = ("none", "null")


def smoke_values(table):
    """What --smoke-test sets, from each entry's `smoke` field: {'samples': 4, 'epochs': 2, ...}."""
    return {key: spec.smoke for key, spec in table.items() if spec.smoke is not None}


SMOKE_SETTINGS, SMOKE_CONFIG = smoke_values(settings.SETTINGS), smoke_values(SCHEMA)

EXAMPLES = """  python -m tune.search --space cnn_scratch.yaml --smoke-test    # the demo data, 4 tiny trials
  python -m tune.search --space cnn_scratch.yaml --data data/ --samples 20 --epochs 8
  python -m tune.search --space resnet_frozen.yaml --data data/ --log mlflow --time-budget 2h
  python -m tune.search --space cnn_scratch.yaml --data data/ --warm-start OLD   # TPE starts from OLD's trials
  python -m tune.search --resume                                 # the latest experiment in runs/
  python -m tune.best --submit                                   # then: its best trial's submission"""


def time_budget_value(text):
    """--time-budget's value: a duration (tune.settings.parse_duration) or none; else argparse names the flag."""
    if text.strip().lower() in NO_BUDGET or not settings.duration_problem(text):
        return text.strip()
    raise argparse.ArgumentTypeError(f"{settings.duration_problem(text)}, or none")


def add_setting_flags(p, groups):
    """--samples, --epochs, ... : one flag per search setting, its type, choices and help from its Key; in the
    resources group (a resource a trial holds) or the search group of --help (`groups`: name -> argparse group)."""
    for key, spec in settings.SETTINGS.items():
        kind = value_type(spec)   # int | None: an int when given
        options = {"type": None if kind is str else kind, "help": f"{spec.help} (search.{key})"}
        if kind is str and isinstance(spec.allowed, tuple) and spec.flag_choices:
            options["choices"] = spec.allowed
        if key == "time_budget":
            options.update(metavar="DURATION", type=time_budget_value)
        if spec.flag_note:
            options["help"] += f"; {spec.flag_note}"
        options["help"] = options["help"].replace("%", "%%")   # argparse %-formats help: "95%" is text here
        group = groups["resources" if spec.resource else "search"]
        group.add_argument(f"--{key.replace('_', '-')}", **options)


def get_args_parser():
    p = ArgumentParser(prog="dogs-search", description=DESCRIPTION, examples=EXAMPLES,
                       groups=("data", "search", "resources", "output"))
    data, search, resources, output = p.groups.values()
    search.add_argument("--space", help="search-space YAML: a file name in search_spaces/ or a path")
    data.add_argument("--data", help="ImageFolder root with Train/ Validation/ [Test/]; default: the demo data set")
    add_setting_flags(p, p.groups)
    data.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="fix config values for every trial, e.g. --set model=cnn lr=3e-4 (repeatable; "
                        "the data folder is --data)")
    output.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="folder or URI (s3://bucket/prefix) that holds experiments (default: runs/)")
    output.add_argument("--name", help="experiment name (default: <space>-<date>-<time>)")
    output.add_argument("--optuna-storage", metavar="URL",
                   help="SQLAlchemy URL of a database for the Optuna study (e.g. postgresql://host/db); default: "
                        "SQLite study.db in the experiment folder. The study is named after the experiment")
    search.add_argument("--resume", action="store_true",
                   help="continue an interrupted experiment (--name, or the latest one in --storage) with its saved "
                        "space, data and settings (--space/--data/--set/search flags that say otherwise are refused; "
                        "--time-budget may change). It restores "
                        "Ray's pickled state: resume only experiments whose folder (or bucket) you trust")
    search.add_argument("--warm-start", metavar="EXPERIMENT|URL#STUDY",
                   help="seed the new study with the finished trials of an old search whose parameters this space "
                        "draws alike (the others skipped, said in one line), so TPE starts informed; they are not "
                        "trained again nor counted in --samples. An experiment (a name in --storage, a folder, a "
                        "URI) or an Optuna database URL and study name, e.g. sqlite:///old.db#study (#study may be "
                        "left out when the database holds one study). Same metric and mode as this search")
    output.add_argument("--log", action="append", default=[], metavar="TRACKER",
                   help="also log each trial as a run to an experiment tracker: mlflow, wandb (repeatable or "
                        "a comma list; pip install 'dogs-tune[mlflow]' / '[wandb]'). W&B reads its usual "
                        "WANDB_API_KEY / WANDB_MODE=offline")
    output.add_argument("--mlflow-uri", metavar="URI",
                   help="MLflow tracking URI for --log mlflow (default: mlflow.db in the experiment folder: "
                        "mlflow ui --backend-store-uri sqlite:///<experiment>/mlflow.db)")
    resources.add_argument("--address", help="join a running Ray cluster (default: $RAY_ADDRESS, else start Ray here)")
    output.add_argument("-v", "--verbose", action="store_true",
                   help="Ray's full console output (a status table and each trial's config, every checkpoint) "
                        "instead of one progress line now and then")
    search.add_argument("--smoke-test", action="store_true",
                   help=f"tiny run: {SMOKE_SETTINGS}, config {SMOKE_CONFIG} (flags still override)")
    return p


def settings_from_args(args):
    """Search settings given on the command line (None = not given); a whole number of CPUs etc. as an int."""
    out = {key: getattr(args, key) for key in settings.SETTINGS}
    for key, spec in settings.SETTINGS.items():
        if spec.type is float and out[key] is not None and float(out[key]).is_integer():
            out[key] = int(out[key])
    return out


def space_from_args(args, data_root):
    """The validated space: file, then --smoke-test sizes, then explicit flags and --set; the data is --data's."""
    path = find_space_file(args.space)
    overrides = dict(SMOKE_SETTINGS) if args.smoke_test else {}
    overrides.update({k: v for k, v in settings_from_args(args).items() if v is not None})
    if str(overrides.get("time_budget")).lower() in NO_BUDGET:
        overrides["time_budget"] = None
    sets = dict(SMOKE_CONFIG) if args.smoke_test else {}
    sets.update(parse_sets(args.set))
    # None: every node builds the demo data itself
    return load(path, overrides, sets, data=str(data_root) if data_root else None)
