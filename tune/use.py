"""Use what a search found: tune.best --predict (photos by class name) and --export (a model to load anywhere).

    python -m tune.best --predict photos/ new.jpg 'more/**/*.png'    # the best trial's top-5 per photo
    python -m tune.best --predict photos/ --ensemble 3 --tta --top-k 3
    python -m tune.best --checkpoint out/best.pt --predict photos/    # any checkpoint, one of dogs.train's too
    python -m tune.best --export model/                               # ONNX, torch.export, safetensors, card

load_members resolves the checkpoints (the best trial, the K best, or --checkpoint) once for both, and for
tune.serve: predictor(...) is the dogs.inference.Predictor a server keeps.
"""
import sys
from pathlib import Path

from dogs import interrupt
from dogs.errors import DataError, ExperimentError
from dogs.files import output_folder
from tune import experiment, handover, storage


def load_members(experiment_arg=None, runs=None, checkpoint_file=None, ensemble=1, log_fn=print):
    """([(model, ckpt)], source): the best trial's checkpoint and the next ensemble-1 best (each checked against its
    trial's files, as --submit does), or `checkpoint_file`. `source` says where they came from (for a model card)."""
    from dogs import checkpoint as dogs_checkpoint

    if checkpoint_file is not None:
        model, ckpt = dogs_checkpoint.load(checkpoint_file)
        log_fn(f"Checkpoint {checkpoint_file}: epoch {ckpt['epoch']}, {len(ckpt['classes'])} classes")
        return [(model, ckpt)], {"checkpoint": str(Path(checkpoint_file).resolve())}
    exp_dir = handover.experiment_dir(experiment_arg, runs)
    experiment.check(exp_dir)
    space = experiment.saved_space(exp_dir)
    metric, mode = space["search"]["metric"], space["search"]["mode"]
    members, trials = [], []
    for trial, location, (model, ckpt) in handover.best_trials(exp_dir, space, ensemble):   # loaded and checked
        members.append((model, ckpt))
        log_fn(f"{'Best trial' if not trials else '  + trial'} of {exp_dir}: {trial.trial_id} ({metric} "
               f"{ckpt['metrics'].get(metric):.4f} at epoch {ckpt['epoch']})")
        trials.append({"trial": trial.trial_id,
                       "checkpoint": f"{experiment.printable(location)}/{dogs_checkpoint.FILENAME}"})
    return members, {"experiment": str(experiment.printable(exp_dir)), "metric": metric, "mode": mode,
                     **trials[0], "ensemble": trials[1:]}


def predictor(experiment_arg=None, runs=None, checkpoint_file=None, ensemble=1, tta=False, device=None,
              log_fn=print):
    """(dogs.inference.Predictor, source) of load_members' checkpoints."""
    from dogs.inference import Predictor

    members, source = load_members(experiment_arg, runs, checkpoint_file, ensemble, log_fn)
    return Predictor(members, tta=tta, device=device), source


def check_args(args):
    """--predict, --export and --checkpoint against the other flags: one line for each mistake."""
    if args.checkpoint and args.experiment:
        raise ExperimentError("--checkpoint FILE and --experiment name two models: give one of them")
    if args.checkpoint and not (args.predict or args.export):
        raise ExperimentError("--checkpoint FILE is for --predict and --export (--submit and --retrain use the "
                              "experiment's trials)")
    if (args.predict or args.export) and (args.submit or args.retrain or args.train_on_val or args.plots
                                          or args.top is not None or args.seeds is not None):
        raise ExperimentError("--predict and --export run on their own: run --submit, --retrain (--top, --seeds) or "
                              "--plots separately")
    if args.ensemble < 1:
        raise ExperimentError(f"--ensemble {args.ensemble}: the number of best trials to average must be >= 1")
    if args.predict is not None and args.data:
        raise ExperimentError("--data is not read by --predict: the photos are the PATHs after --predict, and the "
                              "classes are the model's")
    if args.checkpoint and args.ensemble != 1:
        raise ExperimentError("--ensemble K averages the K best trials of an experiment: not with --checkpoint")
    if args.export and (args.tta or args.ensemble != 1):
        raise ExperimentError("--export writes one model: --tta and --ensemble are for --predict and --submit")
    if args.export and args.predict:
        raise ExperimentError("--predict and --export: run them one at a time")
    if args.export and args.out:
        raise ExperimentError("--out is where --predict writes; --export DIR is the export's folder")
    if args.predict is not None and args.top_k < 1:
        raise ExperimentError(f"--top-k {args.top_k}: the number of classes to show per photo must be >= 1")


def run(args):
    """tune.best --predict / --export."""
    check_args(args)
    if args.predict is not None:
        return predict(args)
    return export(args)


def predict(args):
    """The table of each photo's top-k classes, and predictions.csv in --out (default: the experiment's best/, or the
    current folder with --checkpoint)."""
    from tqdm import tqdm

    from dogs.data import IMAGE_EXTENSIONS
    from dogs.files import refuse_others, write_csv
    from dogs.inference import check_top_k, format_table, photo_files, predictions_frame

    files, missing = photo_files(args.predict)
    if not files:
        raise DataError(f"--predict {' '.join(args.predict)}: no image files there (image extensions: "
                        f"{' '.join(sorted(IMAGE_EXTENSIONS))})")
    out_dir = refuse_others(out_folder(args), ["predictions.csv"], "--out")   # an earlier predictions.csv is replaced
    chosen, _ = predictor(args.experiment, args.storage, args.checkpoint, args.ensemble, args.tta)
    k, note = check_top_k(args.top_k, chosen.classes)
    # decoded and predicted in batches; a path that named nothing is a row too
    with tqdm(total=len(files), unit="photo", desc="predict", disable=None, file=sys.stderr) as bar:
        results = chosen.predict(files, k, progress=bar.update)
    results += [(None, "no such file or folder, and no glob match")] * len(missing)
    table = predictions_frame([*files, *missing], results, k)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(table, out_dir / "predictions.csv")
    print("\n".join(format_table(table, k)))
    if note:
        print(f"  note         {note}")
    bad = table.error.notna().sum()
    print(f"  predictions  {out_dir / 'predictions.csv'} ({len(table) - bad} photo(s) predicted"
          f"{f', {bad} unreadable' if bad else ''}{', mirror TTA' if args.tta else ''}"
          f"{f', ensemble of {args.ensemble}' if args.ensemble > 1 else ''})")
    return 0


def out_folder(args):
    """--out; else the experiment's best/ (beside --submit's files), or the current folder with --checkpoint."""
    if args.out:
        return output_folder(args.out, "--out")
    if args.checkpoint:
        return Path.cwd()
    exp_dir = handover.experiment_dir(args.experiment, args.storage)
    if storage.is_uri(exp_dir):
        raise ExperimentError(f"--experiment {exp_dir} is a URI: give --out, a local folder for predictions.csv")
    handover.refuse_link(Path(exp_dir, "best"), "tune.best writes into the experiment folder only; give --out")
    return Path(exp_dir, "best")


def export(args):
    """The model of the best trial (or --checkpoint) as a self-contained folder (dogs.export)."""
    from dogs.export import check_target, export_model

    target = check_target(args.export)
    data_root = handover.check_data(args.data)   # where Validation is, for the card's per-class accuracy
    [(model, ckpt)], source = load_members(args.experiment, args.storage, args.checkpoint)
    interrupt.catch_sigterm(keyboard_interrupt=True)   # SIGTERM as Ctrl-C: the export's temporary folder is removed
    try:
        written = export_model(model, ckpt, target, source=source, data_root=data_root, log_fn=print)
    except KeyboardInterrupt:
        print(f"dogs-best: export interrupted: nothing written, {args.export} as it was", file=sys.stderr)
        return interrupt.exit_status()
    for name, path in written.items():
        print(f"  {name:<18} {path}")
    return 0
