"""The best trial of a search, and a Kaggle submission from it.

    python -m tune.best                                   # the latest experiment in runs/: print its best trial
    python -m tune.best --experiment runs/X --submit      # + submission.csv and predictions.png from its checkpoint
    python -m tune.best --submit --retrain --train-on-val # train the best config again (Train + Validation) first
    python -m tune.best --experiment s3://bucket/runs/X --submit --out best/     # an experiment on S3
    python -m tune.best --submit --tta --ensemble 3       # mirror TTA, softmax of the 3 best trials averaged
"""
import argparse
import json
import sys
from pathlib import Path

from dogs import ranking
from dogs.errors import ExperimentError, UserError
from tune import experiment, spaces, storage
from tune.cli import fail
from tune.experiment import DEFAULT_STORAGE, SPACE_FILE


def get_args_parser():
    p = argparse.ArgumentParser(prog="dogs-best", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", help="experiment folder or URI, or its name in --storage (tune.search --name) "
                                        f"(default: the latest one in --storage)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"where experiments are, as tune.search --storage (folder or URI; default {DEFAULT_STORAGE})")
    p.add_argument("--submit", action="store_true", help="write submission.csv (Id,Class) and predictions.png")
    p.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=False,
                   help="--retrain: train the best config again for its full epoch budget; "
                        "--no-retrain (default): predict from the best checkpoint")
    p.add_argument("--train-on-val", action="store_true", help="with --retrain: train on Train + Validation")
    p.add_argument("--data", help="the data folder to predict for (and retrain on), when it is not where the "
                                  "search read it (the experiment comes from another machine)")
    p.add_argument("--tta", action="store_true", help="with --submit: average each prediction over the image and "
                                                       "its horizontal mirror")
    p.add_argument("--ensemble", type=int, default=1, metavar="K",
                   help="with --submit: average the softmax of the K best trials' best checkpoints (default 1)")
    p.add_argument("--out", help="output folder (default: <experiment>/best; required for a URI)")
    p.add_argument("--plots", action="store_true",
                   help="write the search plots (Optuna's: history, intermediate values, parameter importances, "
                        "parallel coordinates) into <experiment>/plots/")
    return p


def best_trials(exp_dir, space, count):
    """The `count` best trials that kept a checkpoint, best first, each with its best checkpoint's location."""
    metric, mode = space["search"]["metric"], space["search"]["mode"]
    ranked = ranking.ranked(experiment.read_trials(exp_dir), lambda t: experiment.score(t, metric, mode)[0], mode)
    kept = [(t, c) for t, c in ((t, experiment.best_checkpoint(t, metric, mode)) for t in ranked) if c is not None]
    if len(kept) < count:
        raise ExperimentError(f"{exp_dir}: --ensemble {count}, but only {len(kept)} trial(s) kept a checkpoint")
    return kept[:count]


def refuse_link(path, why):
    """A folder of the experiment that is a link: a planted one would have us write (as this user) elsewhere."""
    if path.is_symlink():
        raise ExperimentError(f"{path} is a link (to {path.resolve()}): {why}")


def best_trial(exp_dir, space):
    """(trial, location of its best checkpoint) by the search's metric and mode (see tune.experiment)."""
    metric, mode = space["search"]["metric"], space["search"]["mode"]
    trials = experiment.read_trials(exp_dir)
    trial = experiment.best_trial(trials, metric, mode)
    if trial is None:
        diverged = any(r.get(metric) is not None for t in trials for r in t.results)
        raise ExperimentError(f"{exp_dir}: no trial has reported a finite {metric}"
                              + (": every value is NaN or Infinity (the trials diverged)" if diverged else " yet"))
    checkpoint = experiment.best_checkpoint(trial, metric, mode)
    if checkpoint is None:
        raise ExperimentError(f"{exp_dir}: trial {trial.trial_id} kept no checkpoint")
    return trial, checkpoint


def experiment_dir(given, runs):
    """--experiment as its name in --storage (as tune.search's --name), else as a folder or URI; without it, the
    latest experiment in --storage. A name that is both an experiment in --storage and a folder here is refused."""
    if not given:
        return experiment.latest_experiment(runs)
    if storage.is_uri(given):
        return given
    here = Path(given).resolve()
    if not experiment.name_problem(given):   # a plain name: the storage's first
        named = storage.join(storage.resolve(runs), given)
        if storage.is_file(storage.join(named, SPACE_FILE)):
            if here.exists() and (storage.is_uri(named) or here != Path(named)):
                raise ExperimentError(f"--experiment {given} names both {named} (in --storage) and the folder {here} "
                                      f"(here); say which: --experiment {named} or --experiment ./{given}")
            return named
    if here.exists():
        return str(here)
    raise ExperimentError(f"--experiment {given}: no such folder here, and no experiment "
                          f"{storage.join(storage.resolve(runs), given)} in --storage")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        return best(args)
    except UserError as err:
        fail("dogs-best", err)


def best(args):
    """Print the best trial; with --submit or --retrain, write its predictions."""
    if args.train_on_val and not args.retrain:
        raise ExperimentError("--train-on-val needs --retrain (a checkpoint cannot be un-trained on Validation)")
    if (args.tta or args.ensemble != 1) and not args.submit:
        raise ExperimentError("--tta and --ensemble shape the submission: they need --submit")
    if args.ensemble < 1:
        raise ExperimentError(f"--ensemble {args.ensemble}: the number of best trials to average must be >= 1")
    if args.ensemble > 1 and args.retrain:
        raise ExperimentError("--ensemble averages the best trials' checkpoints; --retrain trains the best config "
                              "alone: use one of the two")

    # the experiment and its best trial, from the files it parses itself (never Ray's pickled state)
    exp_dir = experiment_dir(args.experiment, args.storage)
    experiment.check(exp_dir)
    if storage.is_uri(exp_dir) and (args.submit or args.retrain) and not args.out:
        raise ExperimentError(f"--experiment {exp_dir} is a URI: give --out, a local folder for the predictions")
    space = experiment.saved_space(exp_dir)
    metric, mode = space["search"]["metric"], space["search"]["mode"]
    trial, checkpoint = best_trial(exp_dir, space)
    data = check_data(args.data) if args.data else None

    from dogs import checkpoint as dogs_checkpoint

    with storage.local_dir(checkpoint, dogs_checkpoint.FILENAME) as local:   # a remote one: a temporary copy
        model, ckpt = dogs_checkpoint.load(local)
    experiment.check_checkpoint(trial, checkpoint, ckpt, metric, mode)
    searched = {k: trial.config[k] for k in spaces.searched_names(space) if k in trial.config}
    print(f"Best trial of {exp_dir}: {trial.trial_id}")
    print(f"  {'best_' + metric:<12} {ckpt['metrics'].get(metric):.4f} at epoch {ckpt['epoch']} "
          f"({mode} {metric} of its {len(trial.results)} epochs run, budget {space['search']['epochs']})")
    print(f"  searched     {json.dumps(searched)}")
    print(f"  config       {json.dumps(ckpt['config'])}")
    print(f"  checkpoint   {experiment.printable(checkpoint)}/{dogs_checkpoint.FILENAME}")
    if args.plots:
        from tune import plots

        if not storage.is_uri(exp_dir):
            refuse_link(Path(exp_dir, "plots"), "the plots go into the experiment folder only")
        print("\n".join(plots.report(exp_dir)))
    if not args.submit and not args.retrain:
        return 0

    # predictions: from the best checkpoint, or from the best config trained again (best.pt by the same metric)
    out_dir = Path(args.out) if args.out else Path(exp_dir, "best")
    if not args.out:
        refuse_link(out_dir, "tune.best writes into the experiment folder only; give --out")
    if data is None:
        check_data(ckpt["config"]["data"], moved=True)
    if args.retrain:
        from dogs.train import run

        config = {**ckpt["config"], "epochs": space["search"]["epochs"], "metric": metric, "mode": mode}
        if data is not None:
            config["data"] = data
        print(f"Retraining the best config for {config['epochs']} epochs"
              f"{' on Train + Validation' if args.train_on_val else ''} -> {out_dir}")
        written = run(config, out_dir, train_on_val=args.train_on_val)
        if args.tta:  # the retrained best.pt, mirrored
            model, ckpt = dogs_checkpoint.load(written["checkpoint"])
    if not args.retrain or args.tta:
        from dogs.predict import submit

        others = []
        for other, location in best_trials(exp_dir, space, args.ensemble)[1:]:
            with storage.local_dir(location, dogs_checkpoint.FILENAME) as local:
                others.append(dogs_checkpoint.load(local))
            experiment.check_checkpoint(other, location, others[-1][1], metric, mode)
            print(f"  ensemble     + trial {other.trial_id}: {experiment.printable(location)}")
        if args.train_on_val:
            print("  (trained on Validation too: the validation accuracies below are not held out)")
        written = submit(model, ckpt, out_dir, data_root=data, tta=args.tta, others=others, report=True)
    for name in ("submission", "grid", "report"):
        if written.get(name):
            print(f"  {name:<12} {written[name]}")
    if written.get("submission") is None:
        print(f"  (no Test/ folder in {data or ckpt['config']['data']}: no submission.csv)")
    return 0


def check_data(folder, moved=False):
    """The data folder to predict for, checked; the demo (None) is built where it is missing."""
    from dogs.data import DataError, resolve_root

    if folder is None:
        return None
    try:
        resolve_root(folder)
    except DataError as err:
        hint = " (the experiment was made elsewhere? give --data DIR, the folder on this machine)" if moved else ""
        raise DataError(f"{'' if moved else '--data: '}{err}{hint}") from None
    return str(Path(folder).expanduser().resolve())


if __name__ == "__main__":
    sys.exit(main())
