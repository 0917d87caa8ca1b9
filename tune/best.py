"""The best trial of a search, and a Kaggle submission from it.

    python -m tune.best                                   # the latest experiment in runs/: print its best trial
    python -m tune.best --experiment runs/X --submit      # + submission.csv and predictions.png from its checkpoint
    python -m tune.best --submit --retrain --train-on-val # train the best config again (Train + Validation) first
    python -m tune.best --experiment s3://bucket/runs/X --submit --out best/     # an experiment on S3
    python -m tune.best --submit --tta --ensemble 3       # mirror TTA, softmax of the 3 best trials averaged
    python -m tune.best --predict photos/ new.jpg         # each photo's top-5 classes by name, predictions.csv
    python -m tune.best --export model/                   # ONNX + torch.export + safetensors + model card
"""
import argparse
import contextlib
import json
import shlex
import sys
from pathlib import Path

from dogs import interrupt
from dogs.cli import ArgumentParser, number, quiet_when_reader_leaves
from dogs.errors import ExperimentError, UserError
from dogs.files import refuse_others
from tune import experiment, lock, reevaluate, spaces, storage, use
from tune.handover import best_trials, check_data, experiment_dir, refuse_link
from tune.cli import fail
from tune.experiment import DEFAULT_STORAGE


def get_args_parser():
    p = ArgumentParser(prog="dogs-best", description=__doc__.split("\n\n")[0],
                       epilog="examples:\n" + __doc__.split("\n\n", 1)[1].rstrip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    search, data, retrain, use_, output = (p.add_argument_group(name) for name in (
        "experiment", "data", "retrain", "predict and export", "output"))
    search.add_argument("--experiment", help="experiment folder or URI, or its name in --storage (tune.search --name) "
                                        f"(default: the latest one in --storage)")
    search.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"where experiments are, as tune.search --storage (folder or URI; default {DEFAULT_STORAGE})")
    output.add_argument("--submit", action="store_true", help="write submission.csv (Id,Class) and predictions.png")
    retrain.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=False,
                   help="--retrain: train the best config again for its full epoch budget; "
                        "--no-retrain (default): predict from the best checkpoint")
    retrain.add_argument("--top", type=number(int, 1), nargs="?", const=reevaluate.TOP, metavar="K",
                   help=f"with --retrain: re-evaluate the K best distinct configurations (K={reevaluate.TOP} when "
                        "given without a number), each trained again with --seeds seeds in parallel on Ray, and hand "
                        "over the one with the best mean score (its best seed's checkpoint)")
    retrain.add_argument("--seeds", type=number(int, 1), nargs="?", const=reevaluate.SEEDS, metavar="N",
                   help=f"with --retrain: seeds per configuration for --top (N={reevaluate.SEEDS} when given "
                        "without a number, or when only --top is)")
    retrain.add_argument("--address", help="with --top: the Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray)")
    retrain.add_argument("--train-on-val", action="store_true", help="with --retrain: train on Train + Validation "
                                                                "(with --top: the chosen configuration, after the choice)")
    data.add_argument("--data", help="the data folder to predict for (and retrain on), when it is not where the "
                                  "search read it (the experiment comes from another machine); with --export, "
                                  "whose Validation/ gives the card's per-class accuracy")
    output.add_argument("--tta", action="store_true", help="with --submit or --predict: average each prediction over the "
                                                       "image and its horizontal mirror")
    output.add_argument("--ensemble", type=number(int, 1), default=1, metavar="K",
                   help="with --submit or --predict: average the softmax of the K best trials' best checkpoints "
                        "(default 1); with --top: of the chosen configuration's K best seeds")
    output.add_argument("--out", help="output folder (default: <experiment>/best, or the current folder with --checkpoint; "
                                 "required for a URI)")
    use_.add_argument("--predict", nargs="+", metavar="PATH",
                   help="photos (files, folders searched at any depth, or globs) to classify: a table of each one's "
                        "top-k classes, and predictions.csv in --out (no Train/ needed: the classes are the model's)")
    use_.add_argument("--top-k", type=number(int, 1), default=5, metavar="K", help="with --predict: classes shown per photo "
                                                                     "(default 5)")
    use_.add_argument("--export", metavar="DIR", help="write the model to DIR for use without this project: ONNX, "
                                                   "torch.export (.pt2), safetensors, model_card.json, MODEL_CARD.md")
    use_.add_argument("--checkpoint", metavar="FILE",
                   help="with --predict or --export: this checkpoint (a trial's checkpoint.pt, dogs.train's best.pt) "
                        "instead of the best trial's")
    output.add_argument("--plots", action="store_true",
                   help="write the search plots (Optuna's: history, intermediate values, parameter importances, "
                        "parallel coordinates) into <experiment>/plots/")
    return p


def interval_text(trial, metric, mode):
    """How sure the best checkpoint's score is: its 95% interval (dogs.uncertainty), or why there is none."""
    from dogs import uncertainty

    result = experiment.best_checkpoint_result(trial, metric, mode)
    bounds = uncertainty.interval(metric, result[metric], result)
    if bounds is None:
        why = "a loss gets none" if not uncertainty.has_interval(metric) else "the trial reported no validation set size"
        return f"  interval     none ({why})"
    return (f"  interval     95% [{bounds[0]:.4f}, {bounds[1]:.4f}]: another validation set of this size could "
            "score anywhere in it")


@quiet_when_reader_leaves
def main(argv=None):
    args = get_args_parser().parse_args(argv)
    args.command = lock.command_line("python -m tune.best", sys.argv[1:] if argv is None else argv)
    try:
        return best(args)
    except UserError as err:
        fail("dogs-best", err)


def best(args):
    """Print the best trial; with --submit or --retrain, write its predictions; --predict and --export: tune.use."""
    if args.predict is not None or args.export or args.checkpoint:
        return use.run(args)
    if args.train_on_val and not args.retrain:
        raise ExperimentError("--train-on-val needs --retrain (a checkpoint cannot be un-trained on Validation)")
    if (args.tta or args.ensemble != 1) and not args.submit:
        raise ExperimentError("--tta and --ensemble shape the submission: they need --submit")
    if args.ensemble < 1:
        raise ExperimentError(f"--ensemble {args.ensemble}: the number of best trials to average must be >= 1")
    if (args.top is not None or args.seeds is not None) and not args.retrain:
        raise ExperimentError("--top and --seeds choose what --retrain trains: they need --retrain")
    if args.top is not None or args.seeds is not None:   # a re-evaluation: each default when only the other is given
        args.top = reevaluate.TOP if args.top is None else args.top
        args.seeds = reevaluate.SEEDS if args.seeds is None else args.seeds
        if args.top < 1 or args.seeds < 1:
            raise ExperimentError(f"--top {args.top} --seeds {args.seeds}: both must be >= 1")
        if args.ensemble > args.seeds:
            raise ExperimentError(f"--ensemble {args.ensemble} with --top: averages the chosen configuration's "
                                  f"seeds, and there are {args.seeds} (--seeds)")
        if args.ensemble > 1 and args.train_on_val:
            raise ExperimentError("--ensemble averages the chosen configuration's seeds; --train-on-val trains it "
                                  "once more on Train + Validation: use one of the two")
    elif args.ensemble > 1 and args.retrain:
        raise ExperimentError("--ensemble averages the best trials' checkpoints; --retrain trains the best config "
                              "alone: use one of the two (or --top: its seeds averaged)")
    if args.address and args.top is None:
        raise ExperimentError("--address is where --top runs its re-evaluation: it needs --retrain --top")
    if args.out:   # a file there, or a user's file under a name we write: one line before anything runs
        refuse_others(args.out, writes(args), "--out")

    # the experiment and its best trial, from the files it parses itself (never Ray's pickled state)
    exp_dir = experiment_dir(args.experiment, args.storage)
    experiment.check(exp_dir)
    # --retrain (and --top's re-evaluation) writes best/ and reevaluation/: one such command at a time (tune.lock)
    with lock.held(exp_dir, args.command) if args.retrain else contextlib.nullcontext():
        return hand_over(args, exp_dir)


def hand_over(args, exp_dir):
    """The best trial printed; with --submit or --retrain, its (or the chosen, or the retrained) predictions."""
    if storage.is_uri(exp_dir) and (args.submit or args.retrain) and not args.out:
        raise ExperimentError(f"--experiment {exp_dir} is a URI: give --out, a local folder for the predictions")
    space = experiment.saved_space(exp_dir)
    metric, mode = space["search"]["metric"], space["search"]["mode"]
    ranked = best_trials(exp_dir, space, 1 if args.top else args.ensemble)   # with --top, --ensemble: its seeds
    (trial, checkpoint, (model, ckpt)), rest = ranked[0], ranked[1:]
    data = check_data(args.data) if args.data else None

    from dogs import checkpoint as dogs_checkpoint

    searched = {k: trial.config[k] for k in spaces.searched_names(space) if k in trial.config}
    print(f"Best trial of {exp_dir}: {trial.trial_id}")
    print(f"  {'best_' + metric:<12} {ckpt['metrics'].get(metric):.4f} at epoch {ckpt['epoch']} "
          f"({mode} {metric} of its {len(trial.results)} epochs run, budget {space['search']['epochs']})")
    print(interval_text(trial, metric, mode))
    held = experiment.best_checkpoint_result(trial, metric, mode).get(reevaluate.compared_on(metric, True))
    if held is not None:   # search.holdout: the same epoch on the part of Validation the search never saw
        print(f"  holdout      {reevaluate.compared_on(metric, True)} {held:.4f} at that epoch, on the held-out part "
              f"of Validation the search never saw: an honest estimate beside best_{metric}")
    print(f"  searched     {json.dumps(searched)}")
    print(f"  config       {json.dumps(ckpt['config'])}")
    print(f"  checkpoint   {experiment.printable(checkpoint)}/{dogs_checkpoint.FILENAME}")
    if args.plots:
        from tune import plots

        if not storage.is_uri(exp_dir):
            refuse_link(Path(exp_dir, "plots"), "the plots go into the experiment folder only")
        print("\n".join(plots.report(exp_dir)))
    if not args.submit and not args.retrain:
        if args.out:   # the best config as a file, and nothing else
            source = f"trial {trial.trial_id} of {exp_dir}"
            print(f"  config file  {write_config(Path(args.out), best_config(ckpt, space, data), source)}")
        return 0

    # predictions: from the best checkpoint, or from the best config trained again (best.pt by the same metric)
    out_dir = Path(args.out) if args.out else Path(exp_dir, "best")
    if not args.out:
        refuse_link(out_dir, "tune.best writes into the experiment folder only; give --out")
        refuse_others(out_dir, writes(args), "--out")
    if data is None:
        check_data(ckpt["config"]["data"], moved=True)
    others, handed = [pair for _, _, pair in rest], None
    if args.top:   # the choice: the best mean over seeds of the top configurations; its best seed's checkpoint
        chosen = reevaluate.reevaluate(exp_dir, args.top, args.seeds, address=args.address, data=data)
        print(reevaluate.printed(chosen.table))
        if chosen.chosen is None:
            print("Re-evaluation " + ("interrupted: run the same command again to continue it (finished runs are "
                                      "kept)" if not chosen.complete else "found no finite score: nothing to hand over"))
            return interrupt.exit_status() if not chosen.complete else 1   # 130 after Ctrl-C, 143 after SIGTERM
        model, ckpt, others = reevaluate.load_runs(chosen, metric, mode, args.ensemble)
        print(f"Chosen: the configuration of trial {chosen.chosen} ({reevaluate.describe(chosen)}); "
              f"seed {ckpt['config']['seed']}'s checkpoint: {reevaluate.checkpoint_of(chosen.runs[0], metric, mode)}")
        print(f"  scores       {reevaluate.estimates(chosen.runs[0], metric, mode)}")
    # the best (or chosen) config as a file that dogs.train --config runs as is
    config = best_config(ckpt, space, data)
    source = f"trial {chosen.chosen if args.top else trial.trial_id} of {exp_dir}"
    print(f"  config file  {write_config(out_dir, config, source)}")
    if args.retrain and (not args.top or args.train_on_val):
        from dogs.train import run

        check_classes(config, ckpt["classes"])
        print(f"Retraining the {'chosen' if args.top else 'best'} config for {config['epochs']} epochs"
              f"{' on Train + Validation' if args.train_on_val else ''} -> {out_dir}")
        interrupt.catch_sigterm(keyboard_interrupt=True)   # SIGTERM (Slurm, Kubernetes, kill) stops the retrain as Ctrl-C does
        try:
            handed = run(config, out_dir, train_on_val=args.train_on_val)["checkpoint"]
        except KeyboardInterrupt:
            again = shlex.join(["python", "-m", "dogs.train", "--config", str(Path(out_dir, "config.json")),
                                "--out", str(out_dir), "--resume"] + (["--train-on-val"] if args.train_on_val else []))
            print(f"dogs-best: retrain interrupted; continue it with: {again}", file=sys.stderr)
            return interrupt.exit_status()
        model, ckpt = dogs_checkpoint.load(handed)   # the retrained best.pt predicts, with report/
    elif args.top:   # the chosen run's checkpoint is handed over as best.pt
        out_dir.mkdir(parents=True, exist_ok=True)
        handed = out_dir / "best.pt"
        dogs_checkpoint.save(ckpt, handed)
    # predictions and report/: of the best checkpoint (and the ensemble), the chosen run, or the retrained best.pt
    from dogs.predict import submit

    for other, location, _ in rest:
        print(f"  ensemble     + trial {other.trial_id}: {experiment.printable(location)}")
    if args.train_on_val:
        print("  (trained on Validation too: the validation accuracies below are not held out)")
    written = {"checkpoint": handed,
               **submit(model, ckpt, out_dir, data_root=data, tta=args.tta, others=others, report=True)}
    for name in ("checkpoint", "submission", "grid", "report"):
        if written.get(name):
            print(f"  {name:<12} {written[name]}")
    if written.get("submission") is None:
        from dogs.data import no_test_images, resolve_root

        print(f"  (no submission.csv: {no_test_images(resolve_root(data or ckpt['config']['data'])[0])})")
    return 0


def writes(args):
    """The names tune.best writes into its output folder for these flags (each replaced only when ours)."""
    from dogs import predict, train

    if not args.submit and not args.retrain:
        return ["config.yaml"]
    return ["config.yaml", "best.pt", *predict.WRITES, "report", *(train.WRITES if args.retrain else ())]


def best_config(ckpt, space, data=None):
    """A checkpoint's config for the search's full epoch budget, ranked as the search ranked (and --data's folder)."""
    s = space["search"]
    config = {**ckpt["config"], "epochs": s["epochs"], "metric": s["metric"], "mode": s["mode"]}
    return config if data is None else {**config, "data": str(data)}


def write_config(out_dir, config, source):
    """out_dir/config.yaml: every key of `config`, for dogs.train --config; returns the line that says so."""
    import yaml
    from dogs.files import atomic_path

    path = Path(out_dir, "config.yaml")
    with atomic_path(path) as tmp:
        tmp.write_text(f"# the config of {source}: python -m dogs.train --config {path}\n"
                       + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return f"{path}  (python -m dogs.train --config {path})"


def check_classes(config, classes):
    """Refuse to retrain on data whose classes are not the search's: its trials were ranked on other classes."""
    from dogs.data import TRAIN, labeled_split, resolve_root

    root, _ = resolve_root(config["data"], config["cache_dir"])
    found = labeled_split(root, TRAIN)[0]
    if found != list(classes):
        raise ExperimentError(f"--retrain on {root}: its classes are not the search's (only in the search: "
                              f"{sorted(set(classes) - set(found))[:5]}, only in {root / TRAIN}: "
                              f"{sorted(set(found) - set(classes))[:5]}): the trials were ranked on other classes; "
                              "retrain on the search's data, or search this data")


if __name__ == "__main__":
    sys.exit(main())
