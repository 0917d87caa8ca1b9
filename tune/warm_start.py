"""--warm-start: the finished trials of an old search given to a new search's Optuna study before its first trial,
so that TPE starts informed (Optuna's study.add_trials; nothing is trained again).

The old search is an experiment of dogs-search (a name in --storage, a folder, a bucket URI: its study, wherever
it lives) or a study in an Optuna database, written DATABASE_URL#STUDY (`sqlite:///old.db#my-study`; the #STUDY
may be left out when the database holds one study). Its metric and direction must be this search's
(best_<metric>, the mode): else one error. Of its finished trials (COMPLETE and PRUNED) one is taken when this
space draws exactly its parameters with equal distributions (Optuna's own equality; conditions walked with its
values); the others are skipped, counted by reason, in the one line the search prints.

A taken trial keeps its parameters, value and per-epoch values and carries the user attribute warm_start_of
("<source> #<number>"); it is not a trial of the new search: Tune runs `samples` new trials, trials.csv and the
summary count only those, and --resume never adds them again (they are added once, when the study is created).
"""
import contextlib
from collections import Counter
from urllib.parse import urlsplit

import optuna
import sqlalchemy.exc
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from dogs.errors import ExperimentError, UserError
from tune import space_values, experiment
from tune.study import engine_kwargs, load_existing, open_study, shown_url, sqlite_path, storage_problem

WARM_ATTR = "warm_start_of"          # a warm-started study trial: "<source> #<its number there>"
DATABASES = ("sqlite", "postgresql", "mysql")   # a --warm-start with one of these schemes is a study URL
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_MISSING = object()


def is_study_url(source):
    return urlsplit(source).scheme.split("+")[0] in DATABASES


@contextlib.contextmanager
def open_source(source, runs):
    """(the old study, how to name it in a line, its experiment's saved space or None for a bare study), to read;
    a source that is missing, unreadable or not a study is one ExperimentError."""
    if not is_study_url(source):   # an experiment: its saved space says its metric, mode and fixed values
        exp_dir = experiment.locate(source, runs, flag="--warm-start")
        experiment.check_folder(exp_dir)
        old_space = experiment.saved_space(exp_dir)
        with open_study(exp_dir) as study:
            yield study, exp_dir, old_space
        return
    url, _, name = source.partition("#")
    path = sqlite_path(url)
    if path is not None and not path.is_file():   # SQLite would make an empty database there
        raise ExperimentError(f"--warm-start {url}: no such file {path}")
    why = storage_problem(url, flag="--warm-start")
    if why:
        raise ExperimentError(why)
    if not name:   # no #STUDY: the database's one study
        names = all_study_names(url)
        if len(names) != 1:
            raise ExperimentError(f"--warm-start {shown_url(url)} holds {len(names)} studies "
                                  f"({', '.join(map(repr, names[:10])) or 'none'}); name one: "
                                  f"--warm-start '{url}#STUDY'")
        name = names[0]
    rdb, study = load_existing(url, name, f"--warm-start {shown_url(url)}")
    try:
        yield study, f"{shown_url(url)}#{study.study_name}", None
    finally:
        rdb.remove_session()
        rdb.engine.dispose()


def all_study_names(url):
    """The names of the studies in the database at `url` (read only: nothing created)."""
    rdb = None
    try:
        rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), skip_table_creation=True)
        return optuna.get_all_study_names(rdb)
    except (RuntimeError, ValueError, ImportError, optuna.exceptions.OptunaError,
            sqlalchemy.exc.SQLAlchemyError) as err:   # not an Optuna database: its driver's words, one line
        raise ExperimentError(f"--warm-start {shown_url(url)}: cannot read its Optuna studies "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    finally:
        if rdb is not None:
            rdb.engine.dispose()


def objective_problem(study, search, old=None):
    """Why the old study's scores are not those of this search's settings `search` (another metric or direction),
    or None."""
    metric, mode = search["metric"], search["mode"]
    score, direction = f"best_{metric}", "maximize" if mode == "max" else "minimize"
    if len(study.directions) != 1:
        return f"its study has {len(study.directions)} objectives; this search has one ({score}, {direction})"
    names, was = study.metric_names, study.direction.name.lower()
    was_metric, was_mode = (old["search"]["metric"], old["search"]["mode"]) if old is not None else (metric, mode)
    if (was_metric, was_mode) != (metric, mode):   # an experiment's saved space says it first
        return (f"its search ranked trials by {was_metric} ({was_mode}), this one by {metric} ({mode}); warm-start "
                f"from a search of the same metric and mode, or set search.metric/mode to {was_metric}/{was_mode}")
    if names != [score] or was != direction:
        named = f"{names[0]!r}" if names else "no metric name (Optuna's study.set_metric_names)"
        return (f"its study scores trials by {named} ({was}), this search by {score!r} ({direction}); "
                f"warm-start from a study of {score} ({direction})")
    return None


def notes(study, old_space, space):
    """What the line adds where the old scores may mean something else here, or the trials change nothing: other
    fixed values (model, data, ...: not in Optuna's distributions), other epochs, a sampler that does not learn."""
    out = []
    if old_space is not None:
        fixed = {p["name"]: p["args"] for p in space["params"] if p["kind"] == "fixed"}
        was = {p["name"]: p["args"] for p in old_space["params"] if p["kind"] == "fixed"}
        searched = {p["name"] for p in [*space["params"], *old_space["params"]] if p["kind"] != "fixed"}
        differ = [f"{name} (old {was.get(name, 'default')!r}, now {fixed.get(name, 'default')!r})"
                  for name in sorted((set(fixed) | set(was)) - searched)
                  if fixed.get(name, _MISSING) != was.get(name, _MISSING)]
        if differ:
            out.append(f"fixed values differ: {', '.join(differ)}")
    max_t, epochs = study.user_attrs.get("max_t"), space["search"]["epochs"]
    if max_t is not None and max_t != epochs:
        out.append(f"its trials ran up to {max_t} epochs, this search's run {epochs}")
    if space["search"]["sampler"] in ("random", "qmc"):
        out.append(f"sampler {space['search']['sampler']} does not learn from trials: they change no proposal")
    return out


def shown(d):
    """An Optuna distribution, short: float 1e-05..0.1 log, int 1..9 step 2, choice [8, 16]."""
    if isinstance(d, CategoricalDistribution):
        return f"choice {list(d.choices)}"
    kind = "float" if isinstance(d, FloatDistribution) else "int"
    step = "" if d.step in (None, 1) else f" step {d.step:g}"
    return f"{kind} {d.low:g}..{d.high:g}{' log' if d.log else ''}{step}"


def drawn(params):
    """{id of a searched param entry: the Optuna distribution the search's own suggest gives it}, from a probe
    study in memory (one trial per entry: an entry's distribution does not depend on the other values)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = {}
    for p in params:
        if p["kind"] != "fixed":
            trial = probe.ask()
            space_values.suggest(trial, p)
            out[id(p)] = trial.distributions[p["name"]]
    return out


class _Differs(Exception):
    pass


def why_skipped(frozen, params, drawn_by_entry):
    """Why an old trial cannot seed this space (the first difference, as the space's walk meets it), or None:
    the walk of this space's params with the trial's values asks exactly its parameters, each with an equal
    distribution."""
    old = frozen.distributions

    def pick(p):
        name, now = p["name"], drawn_by_entry[id(p)]
        if name not in old:
            raise _Differs(f"{name} is new in this space")
        if old[name] != now:
            raise _Differs(f"{name} distribution differs (old {shown(old[name])}, now {shown(now)})")
        return frozen.params[name]

    try:
        chosen, fixed = space_values.assign(params, pick)
    except _Differs as err:
        return str(err)
    extra = sorted(set(old) - set(chosen))
    if extra:
        return f"{extra[0]} is {'fixed' if extra[0] in fixed else 'not searched'} in this space"
    return None


def split_compatible(trials, params):
    """(the finished trials this space can take, Counter {reason: how many} of the finished ones it cannot)."""
    by_entry = drawn(params)
    taken, skipped = [], Counter()
    for frozen in trials:
        if frozen.state not in FINISHED:
            continue
        why = why_skipped(frozen, params, by_entry)
        if why is None:
            taken.append(frozen)
        else:
            skipped[why] += 1
    return taken, skipped


def seeds(taken, where):
    """The taken trials as new study trials (Optuna's create_trial): state, value, parameters, distributions and
    per-epoch values kept; the old user attributes (its Tune trial id, ...) left behind: they name the old search."""
    return [optuna.trial.create_trial(state=t.state, values=t.values, params=t.params, distributions=t.distributions,
                                      intermediate_values=t.intermediate_values,
                                      user_attrs={WARM_ATTR: f"{where} #{t.number}"})
            for t in taken]


def line(taken, finished, skipped, where, noted=()):
    """The one line the search prints: how many of the old finished trials seed it, each reason to skip, notes."""
    reasons = ", ".join(f"{n} {why}" for why, n in skipped.most_common())
    return (f"Warm start: {len(taken)} of {finished} finished trials of {where} seed the study"
            + (f"; {sum(skipped.values())} skipped: {reasons}" if skipped else "")
            + "".join(f"; note: {note}" for note in noted))


def load_trials(source, runs, space):
    """(the study trials to seed a new search with, the line to print), checked before Ray starts; a source that
    cannot be read, of another metric or direction, or with no trial this space can take is one UserError."""
    s = space["search"]
    try:
        with open_source(source, runs) as (study, where, old):
            why = objective_problem(study, s, old)
            if why:
                raise UserError(f"--warm-start {where}: {why}")
            trials = study.get_trials(deepcopy=False)
            noted = notes(study, old, space)
    except ExperimentError as err:   # missing, unreadable, not a study: one line naming the flag
        raise UserError(str(err) if str(err).startswith("--warm-start") else f"--warm-start: {err}") from None
    finished = sum(t.state in FINISHED for t in trials)
    taken, skipped = split_compatible(trials, space["params"])
    if not taken:
        reasons = "; ".join(f"{n} {why}" for why, n in skipped.most_common())
        raise UserError(f"--warm-start {where}: none of its {finished} finished trials fits this space"
                        + (f" ({reasons})" if reasons else "") + "; warm-start from a search of the same params, "
                        "or start without --warm-start")
    return seeds(taken, where), line(taken, finished, skipped, where, noted)
