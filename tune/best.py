"""The best trial of a search, and what to hand over from it: a Kaggle submission, a retrained model, predictions for
photos, a model to use anywhere.

    python -m tune.best                                   # the latest experiment in runs/: print its best trial
    python -m tune.best --experiment runs/X --submit      # + submission.csv and predictions.png from its checkpoint
    python -m tune.best --submit --retrain --train-on-val # train the best config again (Train + Validation) first
    python -m tune.best --experiment s3://bucket/runs/X --submit --out best/     # an experiment on S3
    python -m tune.best --submit --tta --ensemble 3       # mirror TTA, softmax of the 3 best trials averaged
    python -m tune.best --retrain --top 3 --seeds 3 --submit   # the 3 best configurations, 3 seeds each: the best mean
    python -m tune.best --retrain --top 1 --seeds 3 --submit --time-budget 20m   # what finishes in 20 minutes
    python -m tune.best --predict photos/ new.jpg         # each photo's top-5 classes by name, predictions.csv
    python -m tune.best --checkpoint out/best.pt --predict photos/   # any checkpoint, one of dogs.train's too
    python -m tune.best --export model/                   # ONNX + torch.export + safetensors + model card

One function per action (show, submit, retrain, reevaluate, predict, export), chosen from the flags by `action`;
which flags go together is the table RULES. load_members / predictor resolve the checkpoints once, for --predict,
--export and tune.serve.
"""
import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from dogs import interrupt
from dogs.cli import ArgumentParser, fail, number, quiet_when_reader_leaves
from dogs.errors import DataError, ExperimentError, UserError
from dogs.files import output_folder as checked_folder, refuse_others
from tune import storage, experiment, reevaluate as reevaluation, settings, spaces
from tune.spaces import NO_BUDGET, time_budget_value
from tune.experiment import Experiment, holdout_key, printable
from tune.storage import DEFAULT_STORAGE

PROG = "dogs-best"


def get_args_parser():
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], examples=__doc__.split("\n\n")[1],
                       groups=("experiment", "data", "retrain", "predict and export", "output"))
    search, data, retrain, use, output = p.groups.values()
    search.add_argument("--experiment", help="experiment folder or URI, or its name in --storage (tune.search --name) "
                                             "(default: the latest one in --storage)")
    search.add_argument("--storage", default=DEFAULT_STORAGE, help="where experiments are, as tune.search --storage "
                                                                   f"(folder or URI; default {DEFAULT_STORAGE})")
    output.add_argument("--submit", action="store_true", help="write submission.csv (Id,Class) and predictions.png")
    retrain.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=False,
                         help="--retrain: train the best config again for its full epoch budget; "
                              "--no-retrain (default): predict from the best checkpoint")
    retrain.add_argument("--top", type=number(int, 1), nargs="?", const=reevaluation.TOP, metavar="K",
                         help=f"with --retrain: re-evaluate the K best distinct configurations (K={reevaluation.TOP} "
                              "when given without a number), each trained again with --seeds seeds in parallel on "
                              "Ray, and hand over the one with the best mean score (its seeds averaged; --best-seed: "
                              "its best seed's checkpoint)")
    retrain.add_argument("--seeds", type=number(int, 1), nargs="?", const=reevaluation.SEEDS, metavar="N",
                         help=f"with --retrain: seeds per configuration for --top (N={reevaluation.SEEDS} when given "
                              "without a number, or when only --top is)")
    retrain.add_argument("--address", help="with --top: the Ray cluster to run on (default: $RAY_ADDRESS, else a "
                                            "local Ray)")
    retrain.add_argument("--time-budget", type=time_budget_value, metavar="DURATION",
                         help="with --top: wall time from the command's start after which the runs stop at an epoch "
                              "boundary, their checkpoints kept (the same command again continues them); the best of "
                              "what finished is handed over. As tune.search's: 90s, 30m, 2h, 1d12h, or none")
    retrain.add_argument("--best-seed", action="store_true",
                         help="with --top: hand over the chosen configuration's best seed alone (default: its seeds "
                              "averaged, as --ensemble N)")
    retrain.add_argument("--train-on-val", action="store_true", help="with --retrain: train on Train + Validation "
                                                                     "(with --top: the chosen configuration, after "
                                                                     "the choice)")
    data.add_argument("--data", help="the data folder to predict for (and retrain on), when it is not where the "
                                     "search read it (the experiment comes from another machine); with --export, "
                                     "whose Validation/ gives the card's per-class accuracy")
    output.add_argument("--tta", action="store_true", help="with --submit or --predict: average each prediction over "
                                                           "the image and its horizontal mirror")
    output.add_argument("--ensemble", type=number(int, 1), metavar="K",
                        help="with --submit or --predict: average the softmax of the K best trials' best checkpoints "
                             "(default 1); with --top: of the chosen configuration's K best seeds (default: all N, "
                             "bench/RESULTS.md: the best or tied-best hand-over)")
    output.add_argument("--out", help="output folder (default: <experiment>/best, or the current folder with "
                                      "--checkpoint; required for a URI)")
    use.add_argument("--predict", nargs="+", metavar="PATH",
                     help="photos (files, folders searched at any depth, or globs) to classify: a table of each one's "
                          "top-k classes, and predictions.csv in --out (no Train/ needed: the classes are the model's)")
    use.add_argument("--top-k", type=number(int, 1), default=5, metavar="K", help="with --predict: classes shown per photo "
                                                                       "(default 5)")
    use.add_argument("--export", metavar="DIR", help="write the model to DIR for use without this project: ONNX, "
                                                     "torch.export (.pt2), safetensors, model_card.json, MODEL_CARD.md")
    use.add_argument("--checkpoint", metavar="FILE",
                     help="with --predict or --export: this checkpoint (a trial's checkpoint.pt, dogs.train's "
                          "best.pt) instead of the best trial's")
    output.add_argument("--plots", action="store_true",
                        help="write the search plots (Optuna's: history, intermediate values, parameter importances, "
                             "parallel coordinates) into <experiment>/plots/")
    return p


# ----------------------------------------------------------------------------- which flags go together
def reevaluates(a):
    return a.top is not None or a.seeds is not None


def uses(a):
    return a.predict is not None or bool(a.export) or bool(a.checkpoint)


def averages(a):
    """--ensemble K given with K > 1 (not given: None, see check_flags)."""
    return (a.ensemble or 1) > 1


# (the flags it is about, when they are wrong, the line that says so), in the order they are checked: the first
# wrong one is said. "use": --predict, --export, --checkpoint (and nothing of the rest is read); "best": the others.
RULES = [
    ("use", lambda a: a.checkpoint and a.experiment,
     "--checkpoint FILE and --experiment name two models: give one of them"),
    ("use", lambda a: a.checkpoint and not (a.predict or a.export),
     "--checkpoint FILE is for --predict and --export (--submit and --retrain use the experiment's trials)"),
    ("use", lambda a: (a.predict or a.export) and (a.submit or a.retrain or a.train_on_val or a.plots
                                                   or reevaluates(a) or a.best_seed or a.time_budget),
     "--predict and --export run on their own: run --submit, --retrain (--top, --seeds) or --plots separately"),
    ("use", lambda a: a.predict is not None and a.data,
     "--data is not read by --predict: the photos are the PATHs after --predict, and the classes are the model's"),
    ("use", lambda a: a.checkpoint and averages(a),
     "--ensemble K averages the K best trials of an experiment: not with --checkpoint"),
    ("use", lambda a: a.export and (a.tta or averages(a)),
     "--export writes one model: --tta and --ensemble are for --predict and --submit"),
    ("use", lambda a: a.export and a.predict, "--predict and --export: run them one at a time"),
    ("use", lambda a: a.export and a.out, "--out is where --predict writes; --export DIR is the export's folder"),
    ("best", lambda a: a.train_on_val and not a.retrain,
     "--train-on-val needs --retrain (a checkpoint cannot be un-trained on Validation)"),
    ("best", lambda a: (a.tta or averages(a)) and not a.submit and not reevaluates(a),
     "--tta and --ensemble shape the submission: they need --submit"),
    ("best", lambda a: reevaluates(a) and not a.retrain, "--top and --seeds choose what --retrain trains: they need "
                                                         "--retrain"),
    ("best", lambda a: reevaluates(a) and (a.ensemble or 0) > a.seeds,
     "--ensemble {ensemble} with --top: averages the chosen configuration's seeds, and there are {seeds} (--seeds)"),
    ("best", lambda a: reevaluates(a) and averages(a) and a.train_on_val,
     "--ensemble averages the chosen configuration's seeds; --train-on-val trains it once more on Train + "
     "Validation: use one of the two"),
    ("best", lambda a: not reevaluates(a) and averages(a) and a.retrain,
     "--ensemble averages the best trials' checkpoints; --retrain trains the best config alone: use one of the two "
     "(or --top: its seeds averaged)"),
    ("best", lambda a: a.address and a.top is None, "--address is where --top runs its re-evaluation: it needs "
                                                    "--retrain --top"),
    ("best", lambda a: a.best_seed and a.top is None,
     "--best-seed picks among the seeds of --top's chosen configuration: it needs --retrain --top"),
    ("best", lambda a: a.best_seed and a.ensemble is not None,
     "--best-seed hands over the chosen configuration's best seed, --ensemble {ensemble} its {ensemble} best seeds "
     "averaged: give one of them"),
    ("best", lambda a: a.best_seed and a.train_on_val,
     "--best-seed hands over a seed's checkpoint; --train-on-val trains the chosen configuration once more on Train "
     "+ Validation: use one of the two"),
    ("best", lambda a: a.time_budget and a.top is None,
     "--time-budget bounds --top's re-evaluation: it needs --retrain --top (tune.search takes its own --time-budget)"),
    ("best", lambda a: a.time_budget and a.train_on_val,
     "--time-budget bounds the re-evaluation's runs, and --train-on-val trains once more after them: re-evaluate "
     "within the budget first, then run --train-on-val without --time-budget (the finished runs are reused)"),
]


def check_flags(args):
    """The flags against each other (RULES), before anything is read; --top or --seeds alone: the other's default;
    --ensemble not given: with --top all N seeds averaged (1 with --best-seed or --train-on-val), else 1."""
    if reevaluates(args) and args.retrain:   # a re-evaluation: each default when only the other is given
        args.top = reevaluation.TOP if args.top is None else args.top
        args.seeds = reevaluation.SEEDS if args.seeds is None else args.seeds
    if args.time_budget is not None and args.time_budget.lower() in NO_BUDGET:
        args.time_budget = None
    scope = "use" if uses(args) else "best"
    for about, wrong, message in RULES:
        if about == scope and wrong(args):
            raise ExperimentError(message.format(**vars(args)))
    if args.ensemble is None:
        averaged = args.top is not None and not (args.best_seed or args.train_on_val)
        args.ensemble = args.seeds if averaged else 1


def action(args):
    """The one action the flags ask for."""
    if args.predict is not None:
        return predict
    if args.export:
        return export
    if args.top is not None:
        return locked(reevaluate)
    return locked(retrain) if args.retrain else submit if args.submit else show


def locked(write):
    """The action, holding the experiment's lock: --retrain (and --top's re-evaluation) write best/ and the
    re-evaluation's runs, one such command at a time (tune.storage)."""
    def action(args):
        exp = Experiment.open(args.experiment, args.storage)
        with storage.held(exp.location, args.command):
            return write(args, exp)
    return action


@quiet_when_reader_leaves
def main(argv=None):
    began = time.time()   # --time-budget counts from here
    args = get_args_parser().parse_args(argv)
    args.began = began
    args.command = storage.command_line("python -m tune.best", sys.argv[1:] if argv is None else argv)
    try:
        check_flags(args)
        if args.out and not uses(args):   # a file there, or a user's file under a name we write: one line first
            refuse_others(args.out, writes(args), "--out")
        return action(args)(args)
    except UserError as err:
        fail(PROG, err)


# ----------------------------------------------------------------------------- the actions
def show(args):
    """The best trial: its score, interval, config and checkpoint (--plots: the search's plots; --out: its config file
    and nothing else)."""
    exp, members, data = best_trials(args)
    trial, _, (_, ckpt) = members[0]
    warning = exp.baseline_warning(trial, data)   # a best trial that learnt nothing is named (dogs.baseline)
    if warning:
        print(f"  {warning}")
    if args.out:
        config = exp.full_config(ckpt, data)   # the best config as a file, and nothing else
        print(f"  config file  {write_config(Path(args.out), config, source(exp, trial.trial_id))}")
    return 0


def submit(args):
    """--submit: submission.csv, the predictions grid and report/ of the best checkpoint (--ensemble: of the K best)."""
    exp, members, data = best_trials(args)
    trial, _, (model, ckpt) = members[0]
    out_dir = output_folder(args, exp, data, ckpt)
    print(f"  config file  {write_config(out_dir, exp.full_config(ckpt, data), source(exp, trial.trial_id))}")
    return hand_over(args, out_dir, data, model, ckpt, None, members[1:], exp)


def retrain(args, exp):
    """--retrain: the best config trained again for the search's full epoch budget (--train-on-val: on Train +
    Validation); its best.pt predicts."""
    exp, members, data = best_trials(args, exp)
    trial, _, (_, ckpt) = members[0]
    out_dir = output_folder(args, exp, data, ckpt)
    config = exp.full_config(ckpt, data)
    print(f"  config file  {write_config(out_dir, config, source(exp, trial.trial_id))}")
    handed = train_again(args, config, ckpt["classes"], out_dir, "best")
    if isinstance(handed, int):   # interrupted: the exit status
        return handed
    return hand_over(args, out_dir, data, *load_checkpoint(handed), handed, [])


def reevaluate(args, exp):
    """--retrain --top K --seeds N: the K best distinct configurations trained again with N seeds each on Ray (within
    --time-budget); the best mean's seeds averaged are handed over, its best seed's checkpoint as best.pt
    (--best-seed: that seed alone; --train-on-val: trained once more). Cut (the budget, Ctrl-C, SIGTERM, runs that
    errored): the best of the configurations with a finished run, said so; none finished: one line, exit 1 (130/143)."""
    from dogs import checkpoint as dogs_checkpoint

    exp, members, data = best_trials(args, exp)
    out_dir = output_folder(args, exp, data, members[0][2][1])
    deadline = args.began + settings.parse_duration(args.time_budget) if args.time_budget else None
    chosen = reevaluation.reevaluate(exp, args.top, args.seeds, address=args.address, data=data, deadline=deadline,
                                     budget=args.time_budget)
    print(reevaluation.printed(chosen.table))
    status = 0 if chosen.cut in (None, "time budget") else interrupt.exit_status() if chosen.cut == "interrupted" else 1
    if chosen.chosen is None or (chosen.cut and args.train_on_val):
        print(cut_line(args, chosen, "nothing handed over" if chosen.finished else None))
        return status or 1
    if chosen.cut:
        print(cut_line(args, chosen, "handing over the best of what finished"))
    (model, ckpt), *others = reevaluation.load_runs(exp, chosen, args.ensemble)
    rank = list(chosen.configs).index(chosen.chosen) + 1   # its rank in the search: its runs' names (tune.experiment)
    print(f"Chosen: the configuration of trial {exp.name(chosen.chosen)} ({reevaluation.chosen_text(chosen)}); "
          f"run {experiment.run_name(rank, ckpt['config']['seed'])}'s checkpoint: "
          f"{reevaluation.checkpoint_of(exp, chosen.runs[0])}")
    print(f"  scores       {reevaluation.estimates(exp, chosen.runs[0])}")
    config = exp.full_config(ckpt, data)
    print(f"  config file  {write_config(out_dir, config, source(exp, chosen.chosen))}")
    if args.train_on_val:
        handed = train_again(args, config, ckpt["classes"], out_dir, "chosen")
        if isinstance(handed, int):
            return handed
        return hand_over(args, out_dir, data, *load_checkpoint(handed), handed, [])
    out_dir.mkdir(parents=True, exist_ok=True)   # the chosen run's checkpoint is handed over as best.pt
    dogs_checkpoint.save(ckpt, out_dir / "best.pt")
    for run in chosen.runs[1:len(others) + 1]:
        print(f"  ensemble     + seed {run.config['run'][1]}: {reevaluation.checkpoint_of(exp, run)}")
    hand_over(args, out_dir, data, model, ckpt, out_dir / "best.pt", [(None, None, pair) for pair in others])
    return status


def cut_line(args, chosen, then):
    """The line of a re-evaluation that did not run its whole plan: why, how much of it ran, what now."""
    why = {"time budget": f"Time budget {args.time_budget} used up", "interrupted": "Re-evaluation interrupted",
           "errored": "Some runs errored past their retries (search.max_failures)"}.get(chosen.cut)
    if chosen.cut and not chosen.finished:
        return (f"{why} before any run finished (0 of {chosen.planned}): nothing handed over; run the same command "
                "again to continue it (cut runs continue from their latest checkpoint)")
    if chosen.chosen is None:
        return "Re-evaluation found no finite score: nothing to hand over"
    if args.train_on_val:
        return (f"{why}: {chosen.finished} of {chosen.planned} runs finished; --train-on-val trains after the whole "
                "re-evaluation: run the same command again to continue it (finished runs are kept)")
    seeds = len(chosen.runs)
    return (f"{why}: {chosen.finished} of {chosen.planned} runs finished; {then}: the configuration of trial "
            f"{chosen.chosen}, {min(args.ensemble, seeds)} of its {seeds} finished seed(s); the same command again "
            "continues the rest (cut runs from their latest checkpoint)")


def predict(args):
    """--predict: the table of each photo's top-k classes, and predictions.csv in --out (default: the experiment's
    best/, or the current folder with --checkpoint)."""
    from tqdm import tqdm

    from dogs.data import IMAGE_EXTENSIONS
    from dogs.files import write_csv
    from dogs.classifier import check_top_k, format_table, photo_files, predictions_frame

    files, missing = photo_files(args.predict)
    if not files:
        raise DataError(f"--predict {' '.join(args.predict)}: no image files there (image extensions: "
                        f"{' '.join(sorted(IMAGE_EXTENSIONS))})")
    out_dir = refuse_others(predictions_folder(args), ["predictions.csv"], "--out")   # an earlier one is replaced
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


def export(args):
    """--export: the model of the best trial (or --checkpoint) as a self-contained folder (dogs.export)."""
    from dogs.export import check_target, export_model

    target = check_target(args.export)
    data_root = check_data(args.data)   # where Validation is, for the card's per-class accuracy
    [(model, ckpt)], where = load_members(args.experiment, args.storage, args.checkpoint)
    interrupt.catch_sigterm(keyboard_interrupt=True)   # SIGTERM as Ctrl-C: the export's temporary folder is removed
    try:
        written = export_model(model, ckpt, target, source=where, data_root=data_root, log_fn=print)
    except KeyboardInterrupt:
        print(f"{PROG}: export interrupted: nothing written, {args.export} as it was", file=sys.stderr)
        return interrupt.exit_status()
    for name, path in written.items():
        print(f"  {name:<18} {path}")
    return 0


# ----------------------------------------------------------------------------- their parts
def best_trials(args, exp=None):
    """(experiment, its best trial(s) loaded and checked, --data): the experiment named (or `exp`, opened already),
    and its best trial printed (its score, interval, held-out score, config, checkpoint); --plots written."""
    from dogs import checkpoint as dogs_checkpoint

    exp = exp or Experiment.open(args.experiment, args.storage)   # from the files it parses, never Ray's pickles
    if storage.is_uri(exp.location) and (args.submit or args.retrain) and not args.out:
        raise ExperimentError(f"--experiment {exp.location} is a URI: give --out, a local folder for the predictions")
    members = exp.best(1 if args.top else args.ensemble)   # with --top, --ensemble counts its seeds
    data = check_data(args.data) if args.data else None
    (trial, checkpoint, (_, ckpt)), metric = members[0], exp.metric
    searched = {k: trial.config[k] for k in spaces.searched_names(exp.space) if k in trial.config}
    print(f"Best trial of {exp.location}: {exp.name(trial.trial_id)}")
    print(f"  {'best_' + metric:<12} {ckpt['metrics'].get(metric):.4f} at epoch {ckpt['epoch']} "
          f"({exp.mode} {metric} of its {len(trial.results)} epochs run, budget {exp.search['epochs']})")
    print(interval_text(exp, trial))
    held = exp.checkpoint_result(trial).get(holdout_key(metric))
    if held is not None:   # search.holdout: the same epoch on the part of Validation the search never saw
        print(f"  holdout      {holdout_key(metric)} {held:.4f} at that epoch, on the held-out "
              f"part of Validation the search never saw: an honest estimate beside best_{metric}")
    print(f"  searched     {json.dumps(searched)}")
    print(f"  config       {json.dumps(ckpt['config'])}")
    print(f"  checkpoint   {printable(checkpoint)}/{dogs_checkpoint.FILENAME}")
    if args.plots:
        from tune import report

        if not storage.is_uri(exp.location):
            refuse_link(Path(exp.location, "plots"), "the plots go into the experiment folder only")
        print("\n".join(report.report(exp.location)))
    return exp, members, data


def interval_text(exp, trial):
    """How sure the best checkpoint's score is: its 95% interval (dogs.uncertainty), or why there is none."""
    from dogs import uncertainty

    result = exp.checkpoint_result(trial)
    bounds = uncertainty.interval(exp.metric, result[exp.metric], result)
    if bounds is None:
        why = ("a loss gets none" if not uncertainty.has_interval(exp.metric)
               else "the trial reported no validation set size")
        return f"  interval     none ({why})"
    return (f"  interval     95% [{bounds[0]:.4f}, {bounds[1]:.4f}]: another validation set of this size could "
            "score anywhere in it")


def writes(args):
    """The names tune.best writes into its output folder for these flags (each replaced only when ours)."""
    from dogs import submission, train

    if not args.submit and not args.retrain:
        return ["config.yaml"]
    return ["config.yaml", "best.pt", *submission.WRITES, "report", *(train.WRITES if args.retrain else ())]


def source(exp, trial_id):
    return f"trial {exp.name(trial_id)} of {exp.location}"


def output_folder(args, exp, data, ckpt):
    """--out, else <experiment>/best (never through a link); the data to predict for checked (--data, else the
    search's, when `ckpt` names it)."""
    out_dir = Path(args.out) if args.out else Path(exp.location, "best")
    if not args.out:
        refuse_link(out_dir, "tune.best writes into the experiment folder only; give --out")
        refuse_others(out_dir, writes(args), "--out")
    if data is None and ckpt is not None:
        check_data(ckpt["config"]["data"], moved=True)
    return out_dir


def train_again(args, config, classes, out_dir, which):
    """best.pt of `config` trained again into out_dir (dogs.train), or the exit status when SIGTERM/Ctrl-C cut it."""
    from dogs.train import run

    check_classes(config, classes)
    print(f"Retraining the {which} config for {config['epochs']} epochs"
          f"{' on Train + Validation' if args.train_on_val else ''} -> {out_dir}")
    interrupt.catch_sigterm(keyboard_interrupt=True)   # SIGTERM (Slurm, Kubernetes, kill) stops it as Ctrl-C does
    try:
        return run(config, out_dir, train_on_val=args.train_on_val)["checkpoint"]
    except KeyboardInterrupt:
        again = shlex.join(["python", "-m", "dogs.train", "--config", str(Path(out_dir, "config.json")),
                            "--out", str(out_dir), "--resume"] + (["--train-on-val"] if args.train_on_val else []))
        print(f"{PROG}: retrain interrupted; continue it with: {again}", file=sys.stderr)
        return interrupt.exit_status()


def load_checkpoint(path):
    from dogs import checkpoint as dogs_checkpoint

    return dogs_checkpoint.load(path)


def hand_over(args, out_dir, data, model, ckpt, handed, rest, exp=None):
    """Predictions and report/ of `model` (and the ensemble `rest`: [(trial, location, (model, ckpt))]) into
    out_dir, each file written printed."""
    from dogs.submission import submit as write_submission

    for other, location, _ in rest:
        if other is not None:
            print(f"  ensemble     + trial {exp.name(other.trial_id) if exp else other.trial_id}: "
                  f"{printable(location)}")
    if args.train_on_val:
        print("  (trained on Validation too: the validation accuracies below are not held out)")
    written = {"checkpoint": handed, **write_submission(model, ckpt, out_dir, data_root=data, tta=args.tta,
                                                        others=[pair for _, _, pair in rest], report=True)}
    for name in ("checkpoint", "submission", "grid", "report"):
        if written.get(name):
            print(f"  {name:<12} {written[name]}")
    if written.get("submission") is None:
        from dogs.data import no_test_images, resolve_root

        print(f"  (no submission.csv: {no_test_images(resolve_root(data or ckpt['config']['data'])[0])})")
    return 0


def predictions_folder(args):
    """--predict's folder: --out; else the experiment's best/ (beside --submit's files), or the current folder with
    --checkpoint."""
    if args.out:
        return checked_folder(args.out, "--out")
    if args.checkpoint:
        return Path.cwd()
    exp = Experiment.open(args.experiment, args.storage)
    if storage.is_uri(exp.location):
        raise ExperimentError(f"--experiment {exp.location} is a URI: give --out, a local folder for predictions.csv")
    refuse_link(Path(exp.location, "best"), "tune.best writes into the experiment folder only; give --out")
    return Path(exp.location, "best")


def load_members(experiment_arg=None, runs=None, checkpoint_file=None, ensemble=1, log_fn=print):
    """([(model, ckpt)], source): the best trial's checkpoint and the next ensemble-1 best (each checked against its
    trial's files, as --submit does), or `checkpoint_file`. `source` says where they came from (for a model card)."""
    from dogs import checkpoint as dogs_checkpoint

    if checkpoint_file is not None:
        model, ckpt = dogs_checkpoint.load(checkpoint_file)
        log_fn(f"Checkpoint {checkpoint_file}: epoch {ckpt['epoch']}, {len(ckpt['classes'])} classes")
        return [(model, ckpt)], {"checkpoint": str(Path(checkpoint_file).resolve())}
    exp = Experiment.open(experiment_arg, runs or DEFAULT_STORAGE)
    members, trials = [], []
    for trial, location, (model, ckpt) in exp.best(ensemble):   # loaded and checked
        members.append((model, ckpt))
        log_fn(f"{'Best trial' if not trials else '  + trial'} of {exp.location}: {exp.name(trial.trial_id)} "
               f"({exp.metric} {ckpt['metrics'].get(exp.metric):.4f} at epoch {ckpt['epoch']})")
        trials.append({"trial": trial.trial_id, "checkpoint": f"{printable(location)}/{dogs_checkpoint.FILENAME}"})
    return members, {"experiment": str(printable(exp.location)), "metric": exp.metric, "mode": exp.mode,
                     **trials[0], "ensemble": trials[1:]}


def predictor(experiment_arg=None, runs=None, checkpoint_file=None, ensemble=1, tta=False, device=None,
              log_fn=print):
    """(dogs.classifier.Predictor, source) of load_members' checkpoints."""
    from dogs.classifier import Predictor

    members, where = load_members(experiment_arg, runs, checkpoint_file, ensemble, log_fn)
    return Predictor(members, tta=tta, device=device), where


def refuse_link(path, why):
    """A folder of the experiment that is a link: a planted one would have us write (as this user) elsewhere."""
    if path.is_symlink():
        raise ExperimentError(f"{path} is a link (to {path.resolve()}): {why}")


def check_data(folder, moved=False):
    """The data folder to predict for, checked; the demo (None) is built where it is missing."""
    from dogs.data import resolve_root

    if folder is None:
        return None
    try:
        resolve_root(folder)
    except DataError as err:
        hint = " (the experiment was made elsewhere? give --data DIR, the folder on this machine)" if moved else ""
        raise DataError(f"{'' if moved else '--data: '}{err}{hint}") from None
    return str(Path(folder).expanduser().resolve())


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
