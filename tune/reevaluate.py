"""Re-evaluation before handing over: the K best distinct configurations of a search, each trained again with
N seeds, ranked by the mean of their best-epoch scores.

    python -m tune.best --retrain --top 3 --seeds 3 --submit     # the command; reevaluate() is its engine

On a small validation set the best trial of a search is often the luckiest one: the top trials' scores are
within each other's 95% intervals (dogs.uncertainty), and a search that tries more configurations mostly
finds a luckier maximum. Training each of the top K again with N new seeds (1..N; a search trains with the
space's seed, 0 unless it says otherwise) and comparing their means tells the configurations apart by what
they do, not by one draw.

The K x N runs are a small Ray Tune run in <experiment>/reevaluate-top<K>-seeds<N>/ (a grid over
(configuration, seed), FIFO: every run trains the search's full epoch budget), on the search's resources per
trial: they run in parallel, errored runs are retried (search.max_failures), and an interrupted re-evaluation
started again continues: finished runs are not redone. Each run is the search's trainable (dogs.trial) with
the configuration's full config (from its trial's best checkpoint) and `seed` replaced; its params.json holds
{"trial": <the search trial's id>, "seed": <seed>}.
"""
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dogs.errors import ExperimentError
from tune import experiment, spaces, storage

TOP, SEEDS = 3, 3      # defaults of --top and --seeds
PLAN_FILE = "plan.json"


@dataclass
class Reevaluation:
    """What reevaluate() found: the table (one row per configuration, best first), and the chosen one's runs."""
    folder: str
    table: pd.DataFrame
    complete: bool                                   # every run finished (else: interrupted, continue it)
    chosen: str = None                               # search trial id of the best configuration
    runs: list = field(default_factory=list)         # the chosen configuration's finished runs, best first
    configs: dict = field(default_factory=dict)      # search trial id -> the full config its runs train


def folder_of(exp_dir, top, seeds):
    return storage.join(exp_dir, f"reevaluate-top{top}-seeds{seeds}")


def distinct_best(trials, metric, mode, count):
    """The `count` best trials by score (tune.experiment's ranking) whose configurations differ (the seed aside),
    best first, each with its best checkpoint's location; fewer when the search has fewer."""
    ranked = sorted((t for t in trials if experiment.score(t, metric, mode)[0] is not None), key=lambda t: t.trial_id)
    ranked = sorted(ranked, key=lambda t: experiment.key(experiment.score(t, metric, mode)[0], mode), reverse=True)
    chosen, seen = [], set()
    for trial in ranked:
        config = json.dumps({k: v for k, v in trial.config.items() if k != "seed"}, sort_keys=True, default=str)
        location = experiment.best_checkpoint(trial, metric, mode)
        if config not in seen and location is not None:
            seen.add(config)
            chosen.append((trial, location))
    return chosen[:count]


def candidate_configs(exp_dir, space, top, data=None):
    """{search trial id: the full config to train again} of the `top` best distinct configurations, in order."""
    from dogs import checkpoint as dogs_checkpoint

    s = space["search"]
    metric, mode = s["metric"], s["mode"]
    candidates = distinct_best(experiment.read_trials(exp_dir), metric, mode, top)
    if len(candidates) < top:
        raise ExperimentError(f"{exp_dir}: --top {top}, but the search has only {len(candidates)} distinct "
                              "configuration(s) with a checkpoint; give a smaller --top")
    configs = {}
    for trial, location in candidates:
        with storage.local_dir(location, dogs_checkpoint.FILENAME) as local:
            ckpt = dogs_checkpoint.read(Path(local))
        experiment.check_checkpoint(trial, location, ckpt, metric, mode)
        config = {**ckpt["config"], "epochs": s["epochs"], "metric": metric, "mode": mode}
        configs[trial.trial_id] = {**config, "data": data} if data is not None else config
    return configs


def retrain(config, configs):
    """The trainable of one run: the search's, with the configuration of search trial config["trial"]."""
    from dogs.trial import trainable

    trainable({**configs[config["trial"]], "seed": config["seed"]})


def run_name(trial):
    return f"{trial.config['trial']}-seed{trial.config['seed']}"


def check_plan(folder, plan):
    """A re-evaluation folder continues only the same plan (the same configurations and seeds)."""
    path = storage.join(folder, PLAN_FILE)
    if storage.is_file(path):
        fs, local = storage.filesystem(path)
        with fs.open_input_stream(local) as f:
            saved = json.loads(f.read().decode())
        if saved != plan:
            raise ExperimentError(f"{folder} re-evaluates trials {saved.get('trials')}, but the search's top "
                                  f"configurations are now {plan['trials']} (the search went on since?): move "
                                  "that folder away to re-evaluate again")
        return True
    return False


def run_tuner(exp_dir, folder, configs, seeds, search, resources, callbacks=()):
    """Run (or continue) the grid of (configuration, seed) as a Ray Tune run in `folder` (a subfolder of the
    experiment `exp_dir`); returns its ResultGrid."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import FIFOScheduler

    from tune.checkpoints import KeepBestAndLatest
    from tune.search import concurrency

    metric, mode = search["metric"], search["mode"]
    trainable = tune.with_resources(tune.with_parameters(retrain, configs=configs),
                                    {"cpu": search["cpus_per_trial"], "gpu": search["gpus_per_trial"]})
    if tune.Tuner.can_restore(folder):   # finished runs stay finished; interrupted or errored ones continue
        tuner = tune.Tuner.restore(folder, trainable=trainable, resume_errored=True)
        return tuner.fit()
    slots = concurrency({**search, "samples": len(configs) * len(seeds)}, resources)
    tuner = tune.Tuner(
        trainable,
        # epochs: the trial's status (tune.experiment.Trial) reads its budget from params.json
        param_space={"trial": tune.grid_search(list(configs)), "seed": tune.grid_search(list(seeds)),
                     "epochs": search["epochs"]},
        tune_config=tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=1, max_concurrent_trials=slots,
                                    reuse_actors=True, trial_name_creator=run_name, trial_dirname_creator=run_name),
        run_config=tune.RunConfig(
            name=storage.name(folder), storage_path=exp_dir, verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=metric, checkpoint_score_order=mode),
            failure_config=tune.FailureConfig(max_failures=search["max_failures"]),
            callbacks=[JsonLoggerCallback(), KeepBestAndLatest(metric, mode), *callbacks]))
    return tuner.fit()


def results_table(runs, configs, seeds, space, trials):
    """One row per configuration, best first: the mean of its finished runs' scores by the search's ranking
    (tune.experiment.key; of equal means the better-ranked in the search), sd, and each seed's score."""
    s = space["search"]
    metric, mode, score = s["metric"], s["mode"], f"best_{s['metric']}"
    by_id = {t.trial_id: t for t in trials}
    rows = []
    for rank, trial_id in enumerate(configs, 1):
        scores = {seed: experiment.score(run, metric, mode)[0] if run.status == "TERMINATED" else None
                  for seed in seeds for run in [runs.get((trial_id, seed))] if run is not None}
        done = [v for v in scores.values() if experiment.finite(v)]
        rows.append({
            "search_rank": rank, "trial": trial_id,
            **{name: by_id[trial_id].config.get(name) for name in spaces.searched_names(space)},
            f"search_{score}": experiment.score(by_id[trial_id], metric, mode)[0],
            "mean": statistics.fmean(done) if done else math.nan,
            "sd": statistics.stdev(done) if len(done) > 1 else math.nan,
            "runs": f"{len(done)}/{len(seeds)}",
            **{f"seed {seed}": scores.get(seed) for seed in seeds},
        })
    table = pd.DataFrame(rows)
    order = sorted(range(len(rows)), key=lambda i: (-experiment.key(rows[i]["mean"], mode), i))
    return table.iloc[order].reset_index(drop=True)


def reevaluate(exp_dir, top=TOP, seeds=SEEDS, address=None, data=None, callbacks=(), log=print):
    """Train the `top` best distinct configurations of the search in `exp_dir` with `seeds` seeds each (or continue
    doing so), on a local Ray or the cluster at `address`; returns a Reevaluation (see the module docstring).
    `callbacks`: more Ray Tune callbacks for the run (a benchmark's timer, a test's stop)."""
    import ray

    from tune.search import check_resources, start_ray

    if top < 1 or seeds < 1:
        raise ExperimentError(f"--top {top} --seeds {seeds}: both must be >= 1")
    space = experiment.saved_space(exp_dir)
    s = space["search"]
    configs = candidate_configs(exp_dir, space, top, data)
    seed_list = list(range(1, seeds + 1))
    folder = folder_of(exp_dir, top, seeds)
    plan = {"trials": list(configs), "seeds": seed_list}
    resumed = check_plan(folder, plan)
    log(f"{'Continuing' if resumed else 'Re-evaluating'} the {top} best configuration(s) x {seeds} seed(s), "
        f"{s['epochs']} epochs each -> {folder}")

    # Ray: as the search starts it (local on 127.0.0.1, or the cluster), with the search's resources per run
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
    resources = start_ray(address)
    try:
        check_resources(s, resources, autoscaling=bool(address or os.environ.get("RAY_ADDRESS")))
        storage.write_text(storage.join(folder, PLAN_FILE), json.dumps(plan))
        run_tuner(exp_dir, folder, configs, seed_list, s, resources, callbacks)
    finally:
        ray.shutdown()

    # the runs, from their own files; the table; the best configuration and its runs, best first
    trials = experiment.read_trials(folder)
    runs = {(t.config.get("trial"), t.config.get("seed")): t for t in trials}
    table = results_table(runs, configs, seed_list, space, experiment.read_trials(exp_dir))
    complete = all(runs.get((t, seed)) is not None and runs[t, seed].status == "TERMINATED"
                   for t in configs for seed in seed_list)
    result = Reevaluation(folder, table, complete, configs=configs)
    if not complete or not experiment.finite(table["mean"].iloc[0]):
        return result
    result.chosen = table.trial.iloc[0]
    finished = [runs[result.chosen, seed] for seed in seed_list if runs[result.chosen, seed].status == "TERMINATED"]
    result.runs = sorted(finished, key=lambda t: experiment.key(experiment.score(t, s["metric"], s["mode"])[0],
                                                                s["mode"]), reverse=True)
    return result


def checkpoint_of(run, metric, mode):
    """Location of a run's best checkpoint folder (ExperimentError when it kept none)."""
    location = experiment.best_checkpoint(run, metric, mode)
    if location is None:
        raise ExperimentError(f"{run.path} kept no checkpoint")
    return location


def load_runs(result, metric, mode, count=1):
    """(model, ckpt, [(model, ckpt) of the next count-1 runs]) of the chosen configuration's best runs, each
    checked: the epoch and score its result.json reports, the config the re-evaluation gave it."""
    from dogs import checkpoint as dogs_checkpoint

    loaded = []
    for run in result.runs[:count]:
        location = checkpoint_of(run, metric, mode)
        with storage.local_dir(location, dogs_checkpoint.FILENAME) as local:
            model, ckpt = dogs_checkpoint.load(local)
        reported = experiment.best_checkpoint_result(run, metric, mode)
        expected = {**result.configs[result.chosen], "seed": run.config["seed"]}
        if (ckpt["epoch"], ckpt["metrics"].get(metric)) != (reported["epoch"], reported[metric]) \
                or any(ckpt["config"].get(k) != v for k, v in expected.items()):
            raise ExperimentError(f"{location} is not the checkpoint of run {storage.name(run.path)} (its epoch, "
                                  f"{metric} or config differ from the run's own files): the folder was changed")
        loaded.append((model, ckpt))
    return loaded[0][0], loaded[0][1], loaded[1:]


def describe(result):
    """The chosen row in words: mean +- sd over n seeds."""
    row = result.table.iloc[0]
    sd = "" if pd.isna(row["sd"]) else f" ± {row['sd']:.4f}"
    return f"mean {row['mean']:.4f}{sd} over {row['runs']} seeds"


def printed(table):
    """The table as printed: scores to 4 places, searched values to 4 significant digits, missing ones as '-'."""
    scores = [c for c in table.columns if c.startswith(("search_best_", "seed ")) or c in ("mean", "sd")]
    return table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}",
                           formatters={c: lambda v: "-" if pd.isna(v) else f"{v:.4f}" for c in scores})
