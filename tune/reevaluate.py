"""Re-evaluation before handing over: the K best distinct configurations of a search, each trained again with
N seeds, ranked by the mean of their best-epoch scores.

    python -m tune.best --retrain --top 3 --seeds 3 --submit     # the command; reevaluate() is its engine

On a small validation set the best trial of a search is often the luckiest one: the top trials' scores are
within each other's 95% intervals (dogs.uncertainty), and a search that tries more configurations mostly
finds a luckier maximum. Training each of the top K again with N new seeds (1..N; a search trains with the
space's seed, 0 unless it says otherwise) and comparing their means tells the configurations apart by what
they do, not by one draw.

The K x N runs are a small Ray Tune run in <experiment>/reevaluate-top<K>-seeds<N>/part-1/ (a grid over
(configuration, seed), FIFO: every run trains the search's full epoch budget), on the search's resources per
trial: they run in parallel and errored runs are retried (search.max_failures). The same command again
continues an interrupted re-evaluation: the runs not finished yet run as part-2 (and so on); finished runs are
not redone, a run cut short starts again. (Not Ray's restore: like the rest of tune.best it never reads Ray's
pickled state, so an experiment folder from elsewhere cannot run code through it.) Each run is the search's
trainable (dogs.trial) with the configuration's full config (from its trial's best checkpoint) and `seed`
replaced; its params.json holds {"run": [<the search trial's id>, <seed>], "epochs": <budget>}.
"""
import functools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dogs import interrupt, ranking
from dogs.errors import ExperimentError
from tune import experiment, names, spaces, storage

TOP, SEEDS = 3, 3      # defaults of --top and --seeds
PLAN_FILE = "plan.json"   # the configurations and seeds of a re-evaluation folder
PART_FILE = "runs.json"   # the (configuration, seed) pairs a part runs


@dataclass
class Reevaluation:
    """What reevaluate() found: the table (one row per configuration, best first), and the chosen one's runs."""
    folder: str
    table: pd.DataFrame
    complete: bool                                   # every run finished (else: interrupted, continue it)
    chosen: str = None                               # search trial id of the best configuration
    runs: list = field(default_factory=list)         # the chosen configuration's finished runs, best first
    configs: dict = field(default_factory=dict)      # search trial id -> the full config its runs train
    compared: str = None                             # the score compared: the metric, or its holdout_ score


def folder_of(exp_dir, top, seeds):
    return storage.join(exp_dir, f"reevaluate-top{top}-seeds{seeds}")


def candidate_configs(exp, top, data=None):
    """{search trial id: the full config to train again} of the `top` best distinct configurations, in order."""
    from dogs import checkpoint as dogs_checkpoint

    candidates = exp.ranked(distinct=True)[:top]
    if len(candidates) < top:
        raise ExperimentError(f"{exp.location}: --top {top}, but the search has only {len(candidates)} distinct "
                              "configuration(s) with a checkpoint; give a smaller --top")
    configs = {}
    for trial, location in candidates:
        with storage.local_dir(location, dogs_checkpoint.FILENAME) as local:
            ckpt = dogs_checkpoint.read(Path(local))
        exp.check_checkpoint(trial, location, ckpt)
        configs[trial.trial_id] = exp.full_config(ckpt, data)
    return configs


def retrain(config, configs):
    """The trainable of one run: the search's, with the configuration of search trial `run[0]` and seed `run[1]`."""
    from dogs.trial import trainable

    trial_id, seed = config["run"]
    trainable({**configs[trial_id], "seed": seed})


def run_folder(trial):
    """A run's folder: <search trial id>-seed<N>."""
    trial_id, seed = trial.config["run"]
    return f"{trial_id}-seed{seed}"


def run_name(trial, ranks):
    """A run's name (tune.names): `rank1-seed2`, its configuration's rank in the search (`ranks`: {search trial id:
    rank}) and its seed."""
    trial_id, seed = trial.config["run"]
    return names.run_name(ranks[trial_id], seed)


def check_plan(folder, plan):
    """A re-evaluation folder continues only the same plan (the same configurations and seeds); True if it
    had one."""
    path = storage.join(folder, PLAN_FILE)
    if not storage.is_file(path):
        return False
    fs, local = storage.filesystem(path)
    with fs.open_input_stream(local) as f:
        saved = json.loads(f.read().decode())
    if saved != plan:
        raise ExperimentError(f"{folder} re-evaluates trials {saved.get('trials')} with seeds {saved.get('seeds')}, "
                              f"but now the plan is trials {plan['trials']} with seeds {plan['seeds']} (the search "
                              "went on since?): move that folder away to re-evaluate again")
    return True


def read_runs(folder):
    """{(search trial id, seed): run} of every part of the re-evaluation, from the runs' own files: a finished
    run where one is, else the latest attempt."""
    runs = {}
    for part in sorted(storage.subfolders_with(folder, PART_FILE), key=part_number):
        for run in experiment.read_trials(storage.join(folder, part)):
            pair = tuple(run.config.get("run", ()))
            if len(pair) == 2 and (runs.get(pair) is None or runs[pair].status != "TERMINATED"):
                runs[pair] = run
    return runs


def part_number(name):
    return int(name.removeprefix("part-")) if name.startswith("part-") and name[5:].isdigit() else -1


def run_part(exp_dir, folder, configs, pairs, search, resources, callbacks=()):
    """Run the (configuration, seed) `pairs` as a new Ray Tune run, part-<n> of `folder` (a subfolder of the
    experiment `exp_dir`). A new part, never Ray's restore: tune.best reads no pickled state of an experiment;
    a run an interruption cut short starts again."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from tune.progress import ProgressCallback
    from tune.ray_setup import concurrency
    from tune.retention import KeepBestAndLatest
    from tune.trial_logs import JsonLogger

    metric, mode = search["metric"], search["mode"]
    name = f"part-{max(map(part_number, storage.subfolders_with(folder, PART_FILE)), default=0) + 1}"
    storage.write_text(storage.join(folder, name, PART_FILE), json.dumps([list(pair) for pair in pairs]))
    trainable = tune.with_resources(tune.with_parameters(retrain, configs=configs),
                                    {"cpu": search["cpus_per_trial"], "gpu": search["gpus_per_trial"]})
    slots = concurrency({**search, "samples": len(pairs)}, resources)
    tuner = tune.Tuner(
        trainable,
        # epochs: the run's status (tune.experiment.Trial) reads its budget from params.json
        param_space={"run": tune.grid_search([list(pair) for pair in pairs]), "epochs": search["epochs"]},
        tune_config=tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=1, max_concurrent_trials=slots,
                                    reuse_actors=True, trial_dirname_creator=run_folder,
                                    trial_name_creator=functools.partial(run_name, ranks={t: rank for rank, t in
                                                                                         enumerate(configs, 1)})),
        run_config=tune.RunConfig(
            name=name, storage_path=folder, verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=metric, checkpoint_score_order=mode),
            failure_config=tune.FailureConfig(max_failures=search["max_failures"]),
            callbacks=[JsonLogger(), KeepBestAndLatest(metric, mode),   # whole across retries (tune.trial_logs)
                       ProgressCallback(len(pairs), search["epochs"], metric, mode, by_run=True), *callbacks]))
    return tuner.fit()


def compared_on(metric, holdout):
    """The result key configurations are compared by: the search's metric, or with a held-out part of Validation
    its score there (holdout_acc for val_acc), at the run's best epoch by the metric."""
    return experiment.holdout_key(metric) if holdout else metric


def run_score(exp, run):
    """A finished run's score: at its best epoch by the metric, that epoch's metric, or its held-out score."""
    best = exp.best_result(run) if run is not None and run.status == "TERMINATED" else None
    return None if best is None else best.get(compared_on(exp.metric, exp.search["holdout"]))


def results_table(exp, runs, configs, seeds):
    """One row per configuration, best first: the mean of its finished runs' scores by the search's ranking
    (dogs.ranking; of equal means the better-ranked in the search), sd, and each seed's score."""
    metric, mode, holdout = exp.metric, exp.mode, exp.search["holdout"]
    by_id = {t.trial_id: t for t in exp.trials}
    rows = []
    for rank, trial_id in enumerate(configs, 1):
        scores = {seed: run_score(exp, runs.get((trial_id, seed))) for seed in seeds}
        done = [v for v in scores.values() if ranking.finite(v)]
        rows.append({
            "search_rank": rank, "trial": trial_id,
            **{name: by_id[trial_id].config.get(name) for name in spaces.searched_names(exp.space)},
            f"search_best_{metric}": exp.score(by_id[trial_id])[0],
            f"mean {compared_on(metric, holdout)}": statistics.fmean(done) if done else math.nan,
            "sd": statistics.stdev(done) if len(done) > 1 else math.nan,
            "runs": f"{len(done)}/{len(seeds)}",
            **{f"seed {seed}": scores.get(seed) for seed in seeds},
        })
    table = pd.DataFrame(rows)
    mean = f"mean {compared_on(metric, holdout)}"
    order = ranking.ranked(range(len(rows)), lambda i: rows[i][mean], mode)   # no finite mean: last
    order += [i for i in range(len(rows)) if i not in order]
    return table.iloc[order].reset_index(drop=True)


def reevaluate(exp, top=TOP, seeds=SEEDS, address=None, data=None, callbacks=(), log=print):
    """Train the `top` best distinct configurations of the search `exp` (an Experiment) with `seeds` seeds each (or
    continue doing so), on a local Ray or the cluster at `address`; returns a Reevaluation (see the module docstring).
    `callbacks`: more Ray Tune callbacks for the run (a benchmark's timer, a test's stop)."""
    import ray

    from tune.ray_setup import check_resources, joins_cluster, set_environment, start_ray

    if top < 1 or seeds < 1:
        raise ExperimentError(f"--top {top} --seeds {seeds}: both must be >= 1")
    s, exp_dir = exp.search, exp.location
    configs = candidate_configs(exp, top, data)
    seed_list = list(range(1, seeds + 1))
    folder = folder_of(exp_dir, top, seeds)
    plan = {"trials": list(configs), "seeds": seed_list}
    resumed = check_plan(folder, plan)
    log(f"{'Continuing' if resumed else 'Re-evaluating'} the {top} best configuration(s) x {seeds} seed(s), "
        f"{s['epochs']} epochs each -> {folder}")

    # Ray: as the search starts it (local on 127.0.0.1, or the cluster), with the search's resources per run
    set_environment(address)
    pairs = [(t, seed) for t in configs for seed in seed_list]
    done = read_runs(folder) if resumed else {}
    missing = [pair for pair in pairs if done.get(pair) is None or done[pair].status != "TERMINATED"]
    if resumed:
        log(f"{len(pairs) - len(missing)} of {len(pairs)} runs finished before: {len(missing)} to run")
    if missing:
        interrupt.catch_sigterm()   # SIGTERM (Slurm, Kubernetes, kill) stops the runs as Ctrl-C does: Tune saves them
        try:
            resources = start_ray(address)
            interrupt.catch_sigterm()   # again: ray.init installs its own handler (Ray's abort dump, exit 134)
        except KeyboardInterrupt:   # while Ray starts: nothing ran; the same command starts again
            ray.shutdown()
            missing, resources = [], None
    if missing:
        try:
            check_resources(s, resources, autoscaling=joins_cluster(address))
            storage.write_text(storage.join(folder, PLAN_FILE), json.dumps(plan))
            run_part(exp_dir, folder, configs, missing, s, resources, callbacks)
        except KeyboardInterrupt:   # Ctrl-C or SIGTERM before Tune took them over: the runs saved so far are kept
            pass
        finally:
            ray.shutdown()

    # the runs, from their own files; the table; the best configuration and its runs, best first
    runs = read_runs(folder)
    table = results_table(exp, runs, configs, seed_list)
    complete = all(runs.get((t, seed)) is not None and runs[t, seed].status == "TERMINATED"
                   for t in configs for seed in seed_list)
    result = Reevaluation(folder, table, complete, configs=configs, compared=compared_on(s["metric"], s["holdout"]))
    if not complete or not ranking.finite(table[f"mean {result.compared}"].iloc[0]):
        return result
    result.chosen = table.trial.iloc[0]
    finished = [runs[result.chosen, seed] for seed in seed_list if runs[result.chosen, seed].status == "TERMINATED"]
    result.runs = ranking.ranked(finished, lambda run: run_score(exp, run), s["mode"])
    return result


def checkpoint_of(exp, run):
    """Location of a run's best checkpoint folder (ExperimentError when it kept none)."""
    location = exp.checkpoint(run)
    if location is None:
        raise ExperimentError(f"{run.path} kept no checkpoint")
    return location


def load_runs(exp, result, count=1):
    """[(model, ckpt)] of the chosen configuration's `count` best runs, each checked: the epoch and score its
    result.json reports, the config the re-evaluation gave it."""
    return [exp.load(run, checkpoint_of(exp, run), {**result.configs[result.chosen], "seed": run.config["run"][1]})
            for run in result.runs[:count]]


def chosen_text(result):
    """The chosen row in words: mean +- sd over n seeds."""
    row = result.table.iloc[0]
    sd = "" if pd.isna(row["sd"]) else f" ± {row['sd']:.4f}"
    return f"mean {result.compared} {row[f'mean {result.compared}']:.4f}{sd} over {row['runs']} seeds"


def estimates(exp, run):
    """The handed-over run's scores at its best epoch: the optimistic one (the metric the choice maximised) and,
    with a held-out part, the honest one beside it."""
    best, metric = exp.best_result(run), exp.metric
    text = f"{metric} {best[metric]:.4f} at epoch {best['epoch']}"
    held = compared_on(metric, True)
    if held in best:
        text += (f"; {held} {best[held]:.4f} on the {best.get('holdout_images')} held-out validation images (the "
                 "search never saw them; the choice between configurations did)")
    return text


def printed(table):
    """The table as printed: scores to 4 places, searched values to 4 significant digits, missing ones as '-'."""
    scores = [c for c in table.columns if c.startswith(("search_best_", "seed ", "mean ")) or c == "sd"]
    return table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}",
                           formatters={c: lambda v: "-" if pd.isna(v) else f"{v:.4f}" for c in scores})
