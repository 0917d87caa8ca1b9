"""Experiment trackers for a search (`--log mlflow`, `--log wandb`): Ray's own logger callbacks, each trial a run
with its config as params, its per-epoch results as metrics and its end status. The packages are optional
extras: a missing one is one line naming the extra, said before Ray starts."""
import importlib.util
import logging
import os
import re
import shlex
import sys
from pathlib import Path
from urllib.parse import urlparse

from dogs.errors import UserError

TRACKERS = {"mlflow": "mlflow", "wandb": "wandb"}   # --log name: the extra (and package) that brings it
# MLflow's HTTP client, bounded for this process (the driver runs the logger callback): a tracking server that
# stops answering costs at most ~3 x 10 s + backoff, then a warning (tune.callbacks), not the search
MLFLOW_HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                      "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
PING_BOUNDS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}   # the check before Ray
SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")   # asked over HTTP: pinged
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")                        # opened like --optuna-storage
MLFLOW_URI_RULE = ("allowed: http(s)://host:port of a tracking server, sqlite:///path/mlflow.db, "
                   "postgresql://user@host/db, databricks")


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


def mlflow_problem(uri):
    """Why --mlflow-uri cannot be logged to, or None; said before Ray starts. A server (http, https, databricks)
    is asked for one experiment within seconds; a database is opened like --optuna-storage; a SQLite file's
    folder must exist; MLflow 3's file store and unknown schemes are refused."""
    scheme = urlparse(uri).scheme.lower()
    base = scheme.split("+")[0]
    if base in ("sqlite", *DATABASE_SCHEMES):
        from tune.study import sqlite_path, storage_problem   # here: it imports Optuna and SQLAlchemy

        path = sqlite_path(uri)
        if base == "sqlite" and path is None:
            return f"--mlflow-uri {uri}: a SQLite URL is sqlite:///path/mlflow.db (three slashes, then the path)"
        if path is not None:
            return None if path.parent.is_dir() else (f"--mlflow-uri {uri}: the folder {path.parent} does not "
                                                      "exist; create it, or name a file in a folder that does")
        return storage_problem(uri, "--mlflow-uri") if base != "mssql" else None   # mssql: MLflow's own driver
    if scheme in ("", "file") or len(scheme) == 1:   # a path (C:\ included): MLflow 3's file store
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
            return None
        return (f"--mlflow-uri {uri}: MLflow 3 refuses its file store (a folder); use sqlite:///{uri.removeprefix('file://')}"
                f"{'' if uri.endswith('.db') else '/mlflow.db'} or a tracking server (http://host:5000)")
    if scheme not in SERVER_SCHEMES:
        return f"--mlflow-uri {uri}: unknown scheme {scheme!r}; {MLFLOW_URI_RULE}"
    if scheme in ("http", "https") and not urlparse(uri).hostname:
        return f"--mlflow-uri {uri}: no host; {MLFLOW_URI_RULE}"
    return ping_mlflow(uri)


def ping_mlflow(uri):
    """One request to the tracking server at `uri` (its experiments, at most one), within PING_BOUNDS; why it
    failed as one line, or None."""
    from mlflow.tracking import MlflowClient   # here: only --log mlflow imports MLflow

    saved = {key: os.environ.get(key) for key in PING_BOUNDS}
    os.environ.update(PING_BOUNDS)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:   # MLflow's own errors, a refused connection, missing credentials: all one line
        return (f"--mlflow-uri {uri}: the tracking server does not answer ({short_reason(err)}); "
                f"start it (mlflow server --host 127.0.0.1 --port 5000) or fix the URI")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return None


def short_reason(err):
    """An MLflow client error in a few words: the system's reason ([Errno 111] Connection refused, Read timed out)
    when its message holds one, else its first line."""
    text = str(err).strip()
    found = re.search(r"\[Errno -?\d+\] [^'\")(]+|Read timed out|timed out", text)
    return found.group(0).strip() if found else (text.splitlines()[0][:200] if text else type(err).__name__)


def check_mlflow(names, uri):
    """MLflow's HTTP waits bounded for this search (a resumed one's callback, from Ray's state, too), and --log
    mlflow's tracking URI checked before Ray starts (one UserError line); --mlflow-uri without --log mlflow is
    refused (it would log nothing)."""
    for key, value in MLFLOW_HTTP_BOUNDS.items():
        os.environ.setdefault(key, value)
    if uri and "mlflow" not in names:
        raise UserError("--mlflow-uri without --log mlflow logs nothing; add --log mlflow, or leave --mlflow-uri out")
    if "mlflow" not in names:
        return
    why = mlflow_problem(uri) if uri else None
    if why:
        raise UserError(why)


def where_lines(exp_dir, name, uri=None):
    """The search summary's line on --log mlflow's runs: where they are and the command that opens them; none
    without them. The default mlflow.db is found in the experiment folder (so a resumed search says it too)."""
    local = None if "://" in str(exp_dir) else Path(exp_dir, "mlflow.db")
    if not uri and not (local and local.is_file()):
        return []
    uri = uri or mlflow_uri(exp_dir)
    scheme, shown = urlparse(uri).scheme.lower().split("+")[0], shown_uri(uri)
    if scheme in SERVER_SCHEMES:
        return [f"  mlflow       runs of experiment {name} on the tracking server {shown}"]
    page = runs_page(uri, name) if scheme == "sqlite" else ""
    return [f"  mlflow       runs of experiment {name}: mlflow ui --backend-store-uri {shlex.quote(shown)}, then open "
            f"http://127.0.0.1:5000/{page}"]


def shown_uri(uri):
    """A tracking URI to print: any password masked."""
    parts = urlparse(uri)
    return uri if parts.password is None else uri.replace(f":{parts.password}@", ":***@", 1)


def runs_page(uri, name):
    """The UI's page listing the runs of experiment `name` in the SQLite store `uri` (MLflow 3's UI opens on a
    GenAI overview), or "" when the store has no such experiment."""
    from mlflow.tracking import MlflowClient   # here: only a search that logged to MLflow imports it

    said = logging.getLogger("mlflow.store.db.utils")   # its INFO "Updating database tables" amid the summary
    level = said.level
    said.setLevel(logging.WARNING)
    try:
        experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    except Exception:   # a store MLflow cannot read now: the UI's first page, which lists the experiments
        return ""
    finally:
        said.setLevel(level)
    return f"#/experiments/{experiment.experiment_id}/runs" if experiment else ""


def callbacks(names, exp_dir, name, uri=None):
    """Ray's logger callback of each tracker; the MLflow experiment and the W&B project are named after ours."""
    out = []
    if "mlflow" in names:
        from tune.callbacks import GuardedMLflowCallback   # here: it imports Ray

        out.append(GuardedMLflowCallback(tracking_uri=mlflow_uri(exp_dir, uri), experiment_name=name))
    if "wandb" in names:
        from ray.air.integrations.wandb import WandbLoggerCallback

        out.append(WandbLoggerCallback(project=name))
    return out
