"""Experiment trackers for a search (`--log mlflow`, `--log wandb`): Ray's own logger callbacks, each trial a run
with its config as params, its per-epoch results as metrics and its end status. The packages are optional
extras: a missing one is one line naming the extra, said before Ray starts."""
import importlib.util
from pathlib import Path

from dogs.errors import UserError

TRACKERS = {"mlflow": "mlflow", "wandb": "wandb"}   # --log name: the extra (and package) that brings it


def parse_log(values):
    """--log mlflow --log wandb, or --log mlflow,wandb: the known tracker names, each once, in order."""
    names = [name.strip() for value in values or [] for name in value.split(",") if name.strip()]
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"--log {name}: unknown tracker; the known ones are {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise UserError(f"--log {name}: the {name} package is not installed: pip install 'dogs-tune[{name}]' "
                            f"(or -e '.[{name}]' in a checkout)")
    return list(dict.fromkeys(names))


def mlflow_uri(exp_dir, uri=None):
    """--mlflow-uri, else mlflow.db (SQLite) in a local experiment folder (MLflow 3 refuses its old file store)."""
    if uri:
        return uri
    if "://" in str(exp_dir):
        raise UserError(f"--log mlflow: the experiment is in {exp_dir}, not a local folder: give --mlflow-uri "
                        f"(a tracking server, e.g. http://127.0.0.1:5000)")
    return f"sqlite:///{Path(exp_dir, 'mlflow.db').resolve()}"


def callbacks(names, exp_dir, name, uri=None):
    """Ray's logger callback of each tracker; the MLflow experiment and the W&B project are named after ours."""
    out = []
    if "mlflow" in names:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        out.append(MLflowLoggerCallback(tracking_uri=mlflow_uri(exp_dir, uri), experiment_name=name))
    if "wandb" in names:
        from ray.air.integrations.wandb import WandbLoggerCallback

        out.append(WandbLoggerCallback(project=name))
    return out
