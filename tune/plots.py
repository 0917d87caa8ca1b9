"""Search plots: Optuna's matplotlib visualisations of an experiment's study, as PNGs in <experiment>/plots/.

    optimization_history.png   every trial's score (best_<metric>) by trial number, and the best so far; trials
                               ASHA stopped (PRUNED) as grey crosses at their best epoch's score; the best
                               trial named as everywhere (tune.names: `#3 ef4ab16e`)
    intermediate_values.png    every trial's best-so-far per epoch: ASHA's rungs are where lines stop
    param_importances.png      how much each parameter explains the score (Optuna's default, PED-ANOVA)
    parallel_coordinate.png    each complete trial as a line through its parameter values, coloured by score

Written at the end of a search and by `tune.best --plots`. A plot that the study cannot make yet (no complete
trial, one trial, no parameter varied) is skipped with its reason.
"""
import tempfile
import warnings
from pathlib import Path

import pyarrow.fs

from dogs import ranking
from tune import names, storage

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
    """The best trial's point labelled with its name (tune.names), by the search's rule (dogs.ranking over each
    trial's score: a complete trial's value, a stopped one's best epoch; of equal scores the first). Returns
    (number, value, name) drawn, or None when no trial has a score."""
    from tune.study import TRIAL_ATTR   # here: tune.study imports Optuna

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
    name = names.trial_name(tune_id[best], best)
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
