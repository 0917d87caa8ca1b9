"""The best trial of a search, and a Kaggle submission from it.

    python -m tune.best                                   # the latest experiment in runs/: print its best trial
    python -m tune.best --experiment runs/X --submit      # + submission.csv and predictions.png from its checkpoint
    python -m tune.best --submit --retrain --train-on-val # train the best config again (Train + Validation) first
    python -m tune.best --experiment s3://bucket/runs/X --submit --out best/     # an experiment on S3
"""
import argparse
import json
import sys
from pathlib import Path

from tune import spaces, storage
from tune.search import DEFAULT_STORAGE, latest_experiment, saved_space


def get_args_parser():
    p = argparse.ArgumentParser(prog="dogs-best", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", help=f"experiment folder or URI (default: the latest one in {DEFAULT_STORAGE}/)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="where to look for the latest experiment (folder or URI)")
    p.add_argument("--submit", action="store_true", help="write submission.csv (Id,Class) and predictions.png")
    p.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=False,
                   help="--retrain: train the best config again for its full epoch budget; "
                        "--no-retrain (default): predict from the best checkpoint")
    p.add_argument("--train-on-val", action="store_true", help="with --retrain: train on Train + Validation")
    p.add_argument("--out", help="output folder (default: <experiment>/best; required for a URI)")
    return p


def fail(message):
    print(f"dogs-best: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def best_trial(exp_dir):
    """(space, trial, best checkpoint) of the experiment, by the space's metric over all epochs."""
    from ray import tune

    space = saved_space(exp_dir)
    metric, mode = space["search"]["metric"], space["search"]["mode"]
    analysis = tune.ExperimentAnalysis(exp_dir, default_metric=metric, default_mode=mode)
    trial = analysis.get_best_trial(metric, mode, scope="all")
    if trial is None:
        fail(f"{exp_dir}: no trial has reported {metric} yet")
    checkpoint = analysis.get_best_checkpoint(trial, metric, mode)
    if checkpoint is None:
        fail(f"{exp_dir}: trial {trial.trial_id} kept no checkpoint")
    return space, trial, checkpoint


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.train_on_val and not args.retrain:
        fail("--train-on-val needs --retrain (a checkpoint cannot be un-trained on Validation)")

    # the experiment and its best trial
    exp_dir = storage.resolve(args.experiment) if args.experiment else latest_experiment(args.storage)
    if not storage.is_file(storage.join(exp_dir, "search_space.yaml")):
        fail(f"--experiment {exp_dir}: not an experiment of dogs-search (no search_space.yaml in it)")
    if storage.is_uri(exp_dir) and (args.submit or args.retrain) and not args.out:
        fail(f"--experiment {exp_dir} is a URI: give --out, a local folder for the predictions")
    space, trial, checkpoint = best_trial(exp_dir)

    from dogs import checkpoint as dogs_checkpoint

    with checkpoint.as_directory() as checkpoint_dir:   # a remote checkpoint is downloaded to a temp folder
        model, ckpt = dogs_checkpoint.load(checkpoint_dir)
    metric = space["search"]["metric"]
    searched = {k: trial.config[k] for k in spaces.searched_names(space) if k in trial.config}
    print(f"Best trial of {exp_dir}: {trial.trial_id}")
    print(f"  {metric:<12} {ckpt['metrics'].get(metric):.4f} at epoch {ckpt['epoch']} "
          f"(of {trial.last_result.get('training_iteration')} run, budget {space['search']['epochs']})")
    print(f"  searched     {json.dumps(searched)}")
    print(f"  config       {json.dumps(ckpt['config'])}")
    print(f"  checkpoint   {storage.as_uri(checkpoint.filesystem, checkpoint.path)}/{dogs_checkpoint.FILENAME}")
    if not args.submit and not args.retrain:
        return 0

    # predictions: from the best checkpoint, or from the best config trained again
    out_dir = Path(args.out) if args.out else Path(exp_dir, "best")
    if args.retrain:
        from dogs.train import run

        config = {**ckpt["config"], "epochs": space["search"]["epochs"]}
        print(f"Retraining the best config for {config['epochs']} epochs"
              f"{' on Train + Validation' if args.train_on_val else ''} -> {out_dir}")
        written = run(config, out_dir, train_on_val=args.train_on_val)
    else:
        from dogs.predict import submit

        written = submit(model, ckpt, out_dir)
    for name in ("submission", "grid"):
        if written.get(name):
            print(f"  {name:<12} {written[name]}")
    if written.get("submission") is None:
        print(f"  (no Test/ folder in {ckpt['config']['data']}: no submission.csv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
