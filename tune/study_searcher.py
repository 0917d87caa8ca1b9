"""The search's Optuna study, owned through Optuna's public API, as a Ray Tune Searcher.

Tune asks for a configuration (suggest), reports every epoch (on_trial_result) and says when a trial ends
(on_trial_complete). Here that is study.ask() + the space's define-by-run function, trial.report() of the
trial's score (best_<metric>) at each epoch, and study.tell() with the state the trial really ended in:

    COMPLETE  it ran all max_t epochs: its final best_<metric> (its last epoch is an intermediate value too)
    PRUNED    ASHA stopped it before max_t: its intermediate values, which TPE ranks pruned trials by
    FAIL      it errored after its retries (or never produced a score)

The study lives in a database, so it outlives the driver: by default SQLite `study.db` in the experiment
folder (optuna-dashboard reads it live); any SQLAlchemy URL with --optuna-storage; for an experiment in a
bucket, a local SQLite file whose copy goes into the bucket with every state Ray saves. Each study trial
carries its Tune trial id (user attribute `tune_trial_id`). save()/restore() (Tune's --resume) keep only
where the study is and which Tune trial is which study trial, as JSON; restore() reopens the study and
settles the trials a killed driver left RUNNING that Ray's saved state does not know.
"""
import functools
import json
import math
import os
import shutil
import signal
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from dogs.errors import USER_ERROR_KEY, ExperimentError, UserError
from dogs.files import atomic_path
from tune import experiment, space_values, storage
from tune.callbacks import SearchSession, unpickled_into
from tune.settings import SAMPLERS
from tune.study import ABANDONED, STUDY_FILE, TRIAL_ATTR, open_storage, shown_url, sqlite_path, study_location


STEP = "training_iteration"   # ASHA's time_attr: one step per epoch


def startup_trials(samples):
    """Random trials before TPE/GP model anything: a quarter of the search, 3..10 (Optuna's default is 10)."""
    return int(min(10, max(3, samples // 4)))


def make_sampler(name, seed, samples):
    """The Optuna sampler a search's `sampler` setting names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            # multivariate + group: TPE models parameters jointly, each group of conditional ones over the
            # trials where they exist; constant liar: trials still running count as bad, so trials that run
            # at once are not proposed the same configuration (no effect when they run one at a time)
            return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True,
                                              n_startup_trials=startup_trials(samples), seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "qmc":
            return optuna.samplers.QMCSampler(scramble=True, seed=seed, warn_independent_sampling=False)
        if name == "gp":
            return optuna.samplers.GPSampler(n_startup_trials=startup_trials(samples), seed=seed,
                                             warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {name!r}; allowed: {SAMPLERS}")


class StudySearcher(Searcher):
    """Optuna's ask/report/tell driven by Tune; the study is in a database (see the module docstring)."""

    def __init__(self, params, metric, mode, *, max_t, exp_dir, optuna_storage=None, sampler="tpe", seed=0,
                 samples=10, first_trials=(), extend=False, session=None, warm_trials=()):
        """`extend`: more trials for the experiment's existing study (--resume --samples N), not a new study.
        `session`: what it tells the driver (a lost database) and is told (tune.callbacks).
        `warm_trials`: finished trials of an old search (tune.warm_start) added to the new study once, as it is
        created (never kept here: Tune pickles the searcher)."""
        super().__init__(metric=metric, mode=mode)
        self.session = session or SearchSession()
        self.params, self.max_t = params, max_t
        self.study_url, self.mirror = study_location(exp_dir, optuna_storage)
        self.in_experiment = not optuna_storage   # study.db is in the experiment folder (or its bucket copy is)
        self.study_name = storage.name(exp_dir)
        self.sampler_name, self.seed, self.samples = sampler, seed, samples
        self.numbers = {}         # Tune trial id -> study trial number, of every trial this search handed out
        self.unwritten = []       # [call, Tune trial id, args] the database refused: replayed by restore()
        self._reset()
        if not extend:   # else the study is loaded when first asked (the sampler learns from all its trials)
            self._create(first_trials, warm_trials)

    def _reset(self):
        """What lives in this process only: the open study and trials."""
        self._rdb = None          # the study's storage
        self._study = None
        self._trials = {}         # Tune trial id -> optuna.Trial, open
        self._last_step = {}      # Tune trial id -> last step reported
        self._recycle = []        # trials a killed driver asked that Ray's saved state does not know

    def __getstate__(self):
        # Tune pickles the searcher (tuner.pkl): the study stays in its database, the session with its driver
        state = dict(self.__dict__)
        for key in ("_rdb", "_study", "_trials", "_last_step", "_recycle", "session"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.session = unpickled_into()   # the session of the --resume that unpickles it (tune.callbacks)
        self._reset()

    # ---- the study: created once, reopened by restore() ----
    def _create(self, first_trials, warm_trials=()):
        """A new study (with an old search's finished trials added and the space's first_trials queued); a study
        of that name is another search's."""
        try:
            study = optuna.create_study(storage=self.rdb, study_name=self.study_name,
                                        direction="maximize" if self.mode == "max" else "minimize",
                                        sampler=make_sampler(self.sampler_name, self.seed, self.samples))
        except optuna.exceptions.DuplicatedStudyError:
            raise UserError(f"the Optuna study {self.study_name!r} already exists in {self.study_url}: it holds "
                            "another search; pick another --name, or continue that one with --resume") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([self.metric])
        study.set_user_attr("max_t", self.max_t)
        study.add_trials(warm_trials)   # --warm-start: the sampler learns from them before the first ask
        for point in first_trials:
            study.enqueue_trial(point)
        self._study = study

    @property
    def rdb(self):
        if self._rdb is None:
            self._rdb = open_storage(self.study_url)
        return self._rdb

    @property
    def study(self):
        if self._study is None:
            self._load()
        return self._study

    def _load(self):
        """Reopen the study. A sampler whose randomness lives in memory gets a seed that depends on how many
        trials the study has, so that a resumed search does not repeat its first proposals."""
        path = sqlite_path(self.study_url)
        if path is not None and not path.is_file():
            raise ExperimentError(f"the search's Optuna study is missing: no {path}")
        seed = self.seed
        if seed is not None and self.sampler_name != "qmc":   # QMC keeps its place in its sequence by seed
            n = len(optuna.load_study(study_name=self.study_name, storage=self.rdb).trials)
            seed = int(np.random.SeedSequence([seed, n]).generate_state(1)[0])
        self._study = optuna.load_study(study_name=self.study_name, storage=self.rdb,
                                        sampler=make_sampler(self.sampler_name, seed, self.samples))

    def _reopen(self, number):
        """An open handle on trial `number`, asked by an earlier driver (through the storage's public methods)."""
        trial_id = self.rdb.get_trial_id_from_study_id_trial_number(
            self.rdb.get_study_id_from_name(self.study_name), number)
        return optuna.trial.Trial(self.study, trial_id)

    def _frozen(self, number):
        return self.study.get_trials(deepcopy=False)[number]

    def _handle(self, trial_id):
        """The open trial of a Tune trial, reopened after a resume; None when its study trial has finished.

        When its study trial had failed and Tune retries the trial (--resume retries errored trials), the
        retry is a new study trial with the same parameters: Optuna's convention (RetryFailedTrialCallback),
        the failed one stays FAIL. A COMPLETE or PRUNED one stays as it is (Tune reran an epoch it had lost).
        """
        if trial_id in self._trials:
            return self._trials[trial_id]
        frozen = self._frozen(self.numbers[trial_id])
        if frozen.state == TrialState.RUNNING:
            self._last_step[trial_id] = max(frozen.intermediate_values, default=0)
            trial = self._reopen(frozen.number)
        elif frozen.state == TrialState.FAIL:
            self.study.add_trial(optuna.trial.create_trial(
                state=TrialState.RUNNING, params=frozen.params, distributions=frozen.distributions,
                user_attrs={**frozen.user_attrs, "retry_of": frozen.number}))
            trial = self._reopen(len(self.study.get_trials(deepcopy=False)) - 1)
            self.numbers[trial_id], self._last_step[trial_id] = trial.number, 0
            experiment.KNOWN[trial_id] = trial.number
        else:
            return None
        self._trials[trial_id] = trial
        return trial

    # ---- Tune's calls: each one survives a lost database (see _database_lost) ----
    def suggest(self, trial_id):
        """A new trial's config (see _suggest); None (no trial now) once the database is lost."""
        return None if self.session.lost else self._guarded(self._suggest, trial_id)

    def on_trial_result(self, trial_id, result):
        if result.get(self.metric) is not None and trial_id in self.numbers:
            self._guarded(self._report, trial_id, result[STEP], result[self.metric])

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self.numbers:
            if result and result.get(self.metric) is not None and USER_ERROR_KEY not in result:   # the last epoch
                self._guarded(self._report, trial_id, result[STEP], result[self.metric])
            value = (result or {}).get(self.metric)
            state = ("FAIL" if error or value is None or not math.isfinite(value)
                     else "PRUNED" if result[STEP] < self.max_t else "COMPLETE")
            self._guarded(self._tell, trial_id, state, value if state == "COMPLETE" else None)

    def _guarded(self, call, trial_id, *args):
        """call(trial_id, *args); when the study's database cannot be reached, the call is kept in `unwritten`
        (saved with Tune's state, replayed by restore) and the search stops as on Ctrl-C, once; the session says why."""
        import sqlalchemy.exc

        if self.session.lost is None:
            try:
                return call(trial_id, *args)
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError,
                    sqlalchemy.exc.InterfaceError) as err:
                self.session.lost = (f"the Optuna study's database {shown_url(self.study_url)} cannot be reached "
                                     f"({str(err.__cause__ or err).splitlines()[0]}): the search stopped")
                os.kill(os.getpid(), signal.SIGUSR1)   # Tune stops gracefully, saving its state (as on Ctrl-C)
        if call != self._suggest:
            self.unwritten.append([call.__name__, trial_id, list(args)])
        return None

    def _replay(self):
        """The calls a lost database refused, in order, now that it answers again (restore)."""
        calls, self.unwritten = self.unwritten, []
        for name, trial_id, args in calls:
            getattr(self, name)(trial_id, *args)

    def _suggest(self, trial_id):
        """A new trial's config: the next queued first trial, or what the sampler proposes."""
        trial = self._reopen(self._recycle.pop(0)) if self._recycle else self.study.ask()
        trial.set_user_attr(TRIAL_ATTR, trial_id)
        # the values suggest_* return, typed by their distribution (an int is an int); never trial.params,
        # which holds a sampler's raw proposal (GPSampler's 0.0 for an integer)
        searched, fixed = space_values.assign(self.params, functools.partial(space_values.suggest, trial))
        self.numbers[trial_id], self._trials[trial_id], self._last_step[trial_id] = trial.number, trial, 0
        experiment.KNOWN[trial_id] = trial.number   # the trial's name (#3 ef4ab16e) for Tune, TensorBoard, MLflow
        return {**searched, **fixed}

    def _report(self, trial_id, step, value):
        """An epoch's score, as the trial's intermediate value at that step (each step once)."""
        trial = self._handle(trial_id)
        if trial is not None and step > self._last_step.get(trial_id, 0):
            trial.report(value, step)
            self._last_step[trial_id] = step

    def _tell(self, trial_id, state, value=None):
        """Tell the study how the trial ended: COMPLETE (all max_t epochs), PRUNED (stopped early), FAIL."""
        trial = self._handle(trial_id)
        if trial is None:
            return
        self.study.tell(trial, value, state=TrialState[state], skip_if_finished=True)
        self._trials.pop(trial_id)

    # ---- Tune's saved state (--resume) ----
    def save(self, checkpoint_path):
        """Where the study is and which Tune trial is which study trial (JSON, despite Ray's .pkl name);
        for an experiment in a bucket, a consistent copy of the study beside it, which Ray uploads."""
        state = {"study_url": self.study_url, "study_name": self.study_name, "mirror": self.mirror,
                 "in_experiment": self.in_experiment, "trials": self.numbers, "unwritten": self.unwritten}
        with atomic_path(checkpoint_path) as tmp:   # whole or not at all: --resume reads it
            tmp.write_text(json.dumps(state, indent=1))
        if self.mirror:   # SQLite's online backup: a consistent copy while the study is open
            copy = Path(checkpoint_path).with_name(STUDY_FILE)
            tmp = copy.with_name(f".{copy.name}.tmp")
            src, dst = sqlite3.connect(sqlite_path(self.study_url)), sqlite3.connect(tmp)
            try:
                src.backup(dst)
            finally:
                src.close(), dst.close()
            tmp.replace(copy)

    def restore(self, checkpoint_path):
        """Reopen the study as Ray last saved the experiment, and settle what a killed driver left behind:
        a trial it asked after that save (RUNNING, unknown to Ray, which will never resume it) is handed to the
        next new Tune trial when it never reported, else told FAIL. Either way its Tune trial id is recorded
        as abandoned (user attribute `abandoned_tune_trial_ids`): its folder, if Ray made one, is not a trial
        of the experiment any more (see abandoned_trial_ids)."""
        state = json.loads(Path(checkpoint_path).read_text())
        self.numbers, self.unwritten = state["trials"], state.get("unwritten", [])
        experiment.KNOWN.update(self.numbers)
        if self.in_experiment and self.session.exp_dir is not None:   # where the experiment is now
            self.study_url, self.mirror = study_location(self.session.exp_dir)
        if self.mirror:   # the bucket's copy, saved with Ray's state: replaces the local one
            path = sqlite_path(self.study_url)
            path.parent.mkdir(parents=True, exist_ok=True)
            with storage.local_dir(self.mirror, STUDY_FILE) as local:
                if not Path(local, STUDY_FILE).is_file():
                    raise ExperimentError(f"the search's Optuna study is missing: no {STUDY_FILE} in {self.mirror}")
                shutil.copyfile(Path(local, STUDY_FILE), path)
        self._reset()
        known = set(self.numbers.values())
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number in known:
                continue
            trial = self._reopen(frozen.number)
            if TRIAL_ATTR in frozen.user_attrs:   # absent when the driver died inside suggest()
                trial.set_user_attr(ABANDONED, [*frozen.user_attrs.get(ABANDONED, []), frozen.user_attrs[TRIAL_ATTR]])
            if frozen.intermediate_values:
                self.study.tell(trial, state=TrialState.FAIL)
            else:
                self._recycle.append(frozen.number)
        self._replay()

    def states(self):
        """{study trial number: state name}."""
        return {t.number: t.state.name for t in self.study.get_trials(deepcopy=False)}
