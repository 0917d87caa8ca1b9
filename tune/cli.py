"""The command line of tune.search: its parser (the search-setting flags made from tune.settings.SETTINGS) and the
space it asks for."""
import argparse

from dogs.cli import ArgumentParser
from dogs.config import SCHEMA, parse_sets, value_type
from tune import settings, spaces
from tune.experiment import DEFAULT_STORAGE

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


def load_space(args, data_root):
    """The validated space: file, then --smoke-test sizes, then explicit flags and --set; the data is --data's."""
    path = spaces.find_space_file(args.space)
    overrides = dict(SMOKE_SETTINGS) if args.smoke_test else {}
    overrides.update({k: v for k, v in settings_from_args(args).items() if v is not None})
    if str(overrides.get("time_budget")).lower() in NO_BUDGET:
        overrides["time_budget"] = None
    sets = dict(SMOKE_CONFIG) if args.smoke_test else {}
    sets.update(parse_sets(args.set))
    # None: every node builds the demo data itself
    return spaces.load(path, overrides, sets, data=str(data_root) if data_root else None)
