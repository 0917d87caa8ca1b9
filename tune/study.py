"""Where a search's Optuna study lives and how to open it: study.db in the experiment folder (a local copy for an
experiment in a bucket) or an --optuna-storage database, named by the searcher state tune.study_searcher saves."""
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.exc

from dogs.errors import ExperimentError
from tune import storage

STUDY_FILE = "study.db"
CONNECT_TIMEOUT_S = 10   # a database server that does not answer: one line after this long, never a hang
DRIVERS = {"postgresql": "pip install 'dogs-tune[postgres]' (psycopg 3: postgresql:// or postgresql+psycopg://)",
           "mysql": "pip install pymysql (mysql+pymysql://)"}   # what brings each server's driver
ABANDONED = "abandoned_tune_trial_ids"   # Tune trials of a killed driver that Ray's saved state never knew
TRIAL_ATTR = "tune_trial_id"             # the Tune trial id of a study trial (one name per trial: #<number> <id>)


class PickledSearcherState(ExperimentError):
    """The experiment's searcher state is not our JSON (an older dogs-search pickled Ray's OptunaSearch)."""


def sqlite_url(path):
    return f"sqlite:///{Path(path).resolve()}"


def study_location(exp_dir, optuna_storage=None):
    """(SQLAlchemy URL of the live study, experiment URI its study.db copy goes to, or None).

    A local experiment: its own study.db. --optuna-storage: that database. An experiment in a bucket: a
    local SQLite file on the driver (in the temp folder), copied into the bucket with Ray's saved state.
    """
    if optuna_storage:
        return optuna_storage, None
    if not storage.is_uri(exp_dir):
        return sqlite_url(Path(exp_dir) / STUDY_FILE), None
    key = hashlib.sha256(storage.absolute(exp_dir).encode()).hexdigest()[:8]
    local = Path(tempfile.gettempdir(), "dogs-tune-studies", f"{storage.name(exp_dir)}-{key}", STUDY_FILE)
    return sqlite_url(local), exp_dir


def sqlite_path(url):
    """The file of a sqlite:/// URL, else None."""
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def engine_kwargs(url):
    """SQLAlchemy engine options for the study's database: a database server gets a bounded connect (a dead host
    is an error after CONNECT_TIMEOUT_S, not the system's minutes) and each pooled connection is pinged first."""
    if sqlalchemy.engine.make_url(url).get_backend_name() in ("postgresql", "mysql"):
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    return {}


def open_storage(url):
    """An Optuna RDB storage (SQLite: the file's folder is created)."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)   # no line per trial from Optuna: the search prints
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))


def first_line(err):
    """An exception's message as one line (the driver's own words, without SQLAlchemy's background link)."""
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def storage_problem(url, flag="--optuna-storage"):
    """Why the database at `url` cannot hold a study, or None: the URL parsed, its driver imported, a connection
    opened and pinged (within CONNECT_TIMEOUT_S), said before Ray starts. Nothing is created: a new SQLite file's
    folder is only checked."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return (f"{flag} {url!r} is not a database URL; allowed: sqlite:///path/study.db, "
                "postgresql://user@host:port/db (psycopg 3), postgresql+psycopg2://..., mysql+pymysql://...")
    shown, backend = shown_url(url), parsed.get_backend_name()
    try:
        engine = sqlalchemy.create_engine(parsed, **engine_kwargs(url))
    except sqlalchemy.exc.NoSuchModuleError:
        return (f"{flag} {shown}: unknown database scheme {parsed.drivername!r}; allowed: sqlite, postgresql "
                "(postgresql+psycopg, postgresql+psycopg2), mysql (mysql+pymysql)")
    except ImportError as err:
        fix = DRIVERS.get(backend, f"install the Python driver of {parsed.drivername}")
        return f"{flag} {shown}: its database driver is not installed ({err.name or err}): {fix}"
    path = sqlite_path(url)
    if path is not None and not path.exists():   # a new SQLite file: its folder (or the nearest that exists) writable
        folder = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
        engine.dispose()
        if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            return f"{flag} {shown}: cannot create {path}: {folder} is not a folder this user can write to"
        return None
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except (OSError, sqlalchemy.exc.SQLAlchemyError) as err:
        return (f"{flag} {shown}: cannot open the database ({first_line(err)}); check the host, port, user, "
                f"password (PostgreSQL reads ~/.pgpass and PGPASSWORD) and that the server runs "
                f"(connect timeout {CONNECT_TIMEOUT_S} s)")
    finally:
        engine.dispose()
    return None


def abandoned_trial_ids(study):
    """Tune trial ids a killed driver had started that Ray's saved state did not know: --resume never runs
    them again (their configuration went to a new trial, or their study trial is FAIL); and, in the study's own
    attribute, the unfinished trials of a run rebuilt after its Ray state was cut (tune.resume)."""
    return ({trial_id for t in study.trials for trial_id in t.user_attrs.get(ABANDONED, [])}
            | set(study.user_attrs.get(ABANDONED, [])))


def trial_numbers(study):
    """{Tune trial id: Optuna trial number}; of a trial retried after an error (a new study trial with the same
    Tune id, user attribute retry_of) the latest."""
    return {t.user_attrs[TRIAL_ATTR]: t.number for t in study.get_trials(deepcopy=False) if TRIAL_ATTR in t.user_attrs}


def shown_url(url):
    """A database URL to print: any password masked."""
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def study_where(exp_dir):
    """Where the experiment's study is, as a line to print (the command that opens it in optuna-dashboard)."""
    state = read_state(exp_dir)
    if not state["in_experiment"]:
        return f"optuna-dashboard {shown_url(state['study_url'])} (study {state['study_name']})"
    if state["mirror"]:
        return (f"{storage.join(exp_dir, STUDY_FILE)} (copied there with Ray's state; while the search runs: "
                f"optuna-dashboard {state['study_url']})")
    return f"optuna-dashboard {sqlite_url(Path(exp_dir, STUDY_FILE))}"


def read_state(exp_dir):
    """The newest searcher state saved in an experiment (our JSON, parsed as such): where its study is."""
    with storage.local_dir(exp_dir, "searcher-state-*.pkl") as local:
        files = sorted(Path(local).glob("searcher-state-*.pkl"))
        if not files:
            raise ExperimentError(f"{exp_dir}: no searcher-state-*.pkl (the search saved no state yet)")
        try:
            state = json.loads(files[-1].read_text())
        except ValueError:   # parsed as JSON only: a planted or old pickle runs nothing
            raise PickledSearcherState(f"{exp_dir} was searched by an older dogs-search, whose Optuna study was "
                                       "pickled Ray state: it cannot be read or continued; start a new search") from None
    if not (isinstance(state, dict) and isinstance(state.get("study_url"), str)
            and isinstance(state.get("study_name"), str) and isinstance(state.get("in_experiment"), bool)):
        raise ExperimentError(f"{exp_dir}/{files[-1].name} is not a searcher state of dogs-search (no study_url, "
                              "study_name, in_experiment): the experiment is damaged")
    return state


def load_existing(url, name, where):
    """The study `name` in the database at `url`, opened to read: nothing is created (no SQLite file, no
    tables), and a database that is missing, is not one, or does not hold the study is one ExperimentError."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise ExperimentError(f"{where}: the search's Optuna study is missing (no {path})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), skip_table_creation=True)
        return rdb, optuna.load_study(study_name=name, storage=rdb)
    except (KeyError, RuntimeError, ValueError, ImportError, optuna.exceptions.OptunaError,
            sqlalchemy.exc.SQLAlchemyError) as err:
        raise ExperimentError(f"{where}: cannot read the Optuna study {name!r} from {shown_url(url)} "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


@contextlib.contextmanager
def open_study(exp_dir):
    """The experiment's Optuna study, to read: its study.db (a temporary copy of the bucket's for an
    experiment in a bucket), or the --optuna-storage database it was searched in."""
    state = read_state(exp_dir)
    if not state["in_experiment"]:
        _, study = load_existing(state["study_url"], state["study_name"], exp_dir)
        yield study
        return
    with storage.local_dir(exp_dir, STUDY_FILE) as local:
        rdb, study = load_existing(sqlite_url(Path(local, STUDY_FILE)), state["study_name"], exp_dir)
        try:
            yield study
        finally:
            rdb.remove_session()
            rdb.engine.dispose()
