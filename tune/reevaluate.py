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
trial: they run in parallel and errored runs are retried (search.max_failures). A time budget (`deadline`,
tune.best --time-budget) stops them as it stops a search (tune.ray_tuner.time_budget): no run starts an epoch the
budget cannot finish, and each keeps its last epoch's checkpoint. The same command again continues a cut
re-evaluation: the runs not finished yet run as part-2 (and so on), a cut one from its latest checkpoint (its
epochs are those of all its parts, each once: SeedRun); finished runs are not redone. (Not Ray's restore: like the
rest of tune.best it never reads Ray's pickled state, so an experiment folder from elsewhere cannot run code
through it.) Each run is the search's trainable (dogs.ray_trainable) with the configuration's full config (from its
trial's best checkpoint) and `seed` replaced; its params.json holds {"run": [<the search trial's id>, <seed>],
"epochs": <budget>}. A cut re-evaluation still chooses, among the configurations with a finished run.
"""
import functools
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dogs import interrupt, ranking
from dogs.errors import ExperimentError
from tune import experiment, spaces, storage

TOP, SEEDS = 3, 3      # defaults of --top and --seeds
PLAN_FILE = "plan.json"   # the configurations and seeds of a re-evaluation folder
PART_FILE = "runs.json"   # the (configuration, seed) pairs a part runs


@dataclass
class Reevaluation:
    """What reevaluate() found: the table (one row per configuration, best first), and the chosen one's runs."""
    folder: str
    table: pd.DataFrame
    complete: bool                                   # every run finished (else: cut, continue it)
    chosen: str = None                               # search trial id of the best configuration (of those with a
                                                     # finished run), None when no run finished with a finite score
    runs: list = field(default_factory=list)         # the chosen configuration's finished runs, best first
    configs: dict = field(default_factory=dict)      # search trial id -> the full config its runs train
    compared: str = None                             # the score compared: the metric, or its holdout_ score
    finished: int = 0                                # runs finished, of `planned`
    planned: int = 0
    cut: str = None                                  # why not complete: "time budget", "interrupted", "errored"


@dataclass
class SeedRun(experiment.Trial):
    """One (configuration, seed) run as its parts' folders hold it: a run cut in one part continues from its latest
    checkpoint in the next, so its results are the epochs of all its parts (each once, from the part that ran it
    last); its status and folder are its last part's. Its checkpoints are in its parts (kept, latest)."""
    parts: list = field(default_factory=list)        # its Trial in each part that ran it, in order


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


def retrain(config, configs, starts=None):
    """The trainable of one run: the search's, with the configuration of search trial `run[0]` and seed `run[1]`;
    continued from the checkpoint folder `starts` names for it (a run cut in an earlier part), if any."""
    from dogs import checkpoint as dogs_checkpoint
    from dogs.ray_trainable import trainable

    trial_id, seed = config["run"]
    start, resume = (starts or {}).get((trial_id, seed)), None
    if start is not None:
        with storage.local_dir(start, dogs_checkpoint.FILENAME) as local:
            resume = dogs_checkpoint.read(Path(local))
    trainable({**configs[trial_id], "seed": seed}, start_from=resume)


def run_folder(trial):
    """A run's folder: <search trial id>-seed<N>."""
    trial_id, seed = trial.config["run"]
    return f"{trial_id}-seed{seed}"


def run_name(trial, ranks):
    """A run's name (tune.experiment): `rank1-seed2`, its configuration's rank in the search (`ranks`: {search trial id:
    rank}) and its seed."""
    trial_id, seed = trial.config["run"]
    return experiment.run_name(ranks[trial_id], seed)


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
    """{(search trial id, seed): SeedRun} of every part of the re-evaluation, from the runs' own files."""
    parts = {}
    for part in sorted(storage.subfolders_with(folder, PART_FILE), key=part_number):
        for trial in experiment.read_trials(storage.join(folder, part)):
            pair = tuple(trial.config.get("run", ()))
            if len(pair) == 2:
                parts.setdefault(pair, []).append(trial)
    return {pair: joined(trials) for pair, trials in parts.items()}


def joined(parts):
    """A run's parts (its Trial in each part, in order) as one SeedRun, up to the first part that finished it."""
    end = next((i for i, part in enumerate(parts) if part.status == "TERMINATED"), len(parts) - 1)
    parts = parts[:end + 1]
    by_epoch = {result.get("epoch", result.get("training_iteration")): result
                for part in parts for result in part.results}
    last = parts[-1]
    # no checkpoints of its own: a checkpoint is found in the part that kept it (kept, latest)
    return SeedRun(trial_id=last.trial_id, path=last.path, config=last.config, errored=last.errored,
               results=[by_epoch[epoch] for epoch in sorted(by_epoch)], damaged=last.damaged, parts=parts)


def finished(run):
    return run is not None and run.status == "TERMINATED"


def kept(exp, run):
    """(part, location) of a run's best kept checkpoint over its parts (of equal ones the later); ExperimentError when
    it kept none."""
    best = ranking.best([(part, exp.checkpoint_result(part)) for part in run.parts if exp.checkpoint_result(part)],
                        lambda pair: pair[1].get(exp.metric), exp.mode, ties="last")
    if best is None:
        raise ExperimentError(f"{run.path} kept no checkpoint")
    return best[0], storage.join(best[0].path, best[1]["checkpoint_dir_name"])


def latest(run):
    """(location, epoch) of a run's latest kept checkpoint over its parts (where a cut run continues), or None."""
    saved = [(result["epoch"], part) for part in run.parts for result in part.results
             if result.get("checkpoint_dir_name") in part.checkpoints]
    if not saved:
        return None
    epoch, part = max(saved, key=lambda pair: pair[0])
    name = next(r["checkpoint_dir_name"] for r in part.results if r["epoch"] == epoch)
    return storage.join(part.path, name), epoch


def part_number(name):
    return int(name.removeprefix("part-")) if name.startswith("part-") and name[5:].isdigit() else -1


def run_part(exp_dir, folder, configs, pairs, search, resources, callbacks=(), starts=None, session=None):
    """Run the (configuration, seed) `pairs` as a new Ray Tune run, part-<n> of `folder` (a subfolder of the
    experiment `exp_dir`). A new part, never Ray's restore: tune.best reads no pickled state of an experiment;
    a run cut in an earlier part continues from the checkpoint folder `starts` names for its pair. `session`: what
    the retention callback tells the driver (tune.callbacks: a checkpoint saved, for the time budget)."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from tune.progress import ProgressCallback
    from tune.ray_setup import concurrency
    from tune.callbacks import KeepBestAndLatest
    from tune.callbacks import JsonLogger
    from tune.ray_tuner import BudgetWatch

    metric, mode = search["metric"], search["mode"]
    name = f"part-{max(map(part_number, storage.subfolders_with(folder, PART_FILE)), default=0) + 1}"
    storage.write_text(storage.join(folder, name, PART_FILE), json.dumps([list(pair) for pair in pairs]))
    trainable = tune.with_resources(tune.with_parameters(retrain, configs=configs, starts=starts or {}),
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
            # tune.callbacks (whole across retries), tune.callbacks, tune.ray_tuner (the time budget)
            callbacks=[JsonLogger(), KeepBestAndLatest(metric, mode, session), BudgetWatch(),
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
            **{f"seed {seed}": math.nan if scores[seed] is None else scores[seed] for seed in seeds},   # "-": none
        })
    table = pd.DataFrame(rows)
    mean = f"mean {compared_on(metric, holdout)}"
    order = ranking.ranked(range(len(rows)), lambda i: rows[i][mean], mode)   # no finite mean: last
    order += [i for i in range(len(rows)) if i not in order]
    return table.iloc[order].reset_index(drop=True)


def reevaluate(exp, top=TOP, seeds=SEEDS, address=None, data=None, callbacks=(), log=print, deadline=None,
               budget=None):
    """Train the `top` best distinct configurations of the search `exp` (an Experiment) with `seeds` seeds each (or
    continue doing so), on a local Ray or the cluster at `address`, until the time budget's `deadline` (Unix seconds,
    said as `budget`; None: none); returns a Reevaluation (see the module docstring). `callbacks`: more Ray Tune
    callbacks for the run (a benchmark's timer, a test's stop)."""
    from tune.ray_setup import set_environment

    if top < 1 or seeds < 1:
        raise ExperimentError(f"--top {top} --seeds {seeds}: both must be >= 1")
    s, exp_dir = exp.search, exp.location
    configs = candidate_configs(exp, top, data)
    seed_list = list(range(1, seeds + 1))
    folder = folder_of(exp_dir, top, seeds)
    plan = {"trials": list(configs), "seeds": seed_list}
    resumed = check_plan(folder, plan)

    # what is left: the runs not finished, a cut one from its latest checkpoint
    set_environment(address)
    pairs = [(t, seed) for t in configs for seed in seed_list]
    done = read_runs(folder) if resumed else {}
    missing = [pair for pair in pairs if not finished(done.get(pair))]
    starts = {pair: latest(done[pair]) for pair in missing if pair in done and latest(done[pair])}
    what = (f"{'Continuing' if resumed else 'Re-evaluating'} the {top} best configuration(s) x {seeds} seed(s), "
            f"{s['epochs']} epochs each -> {folder}")
    if resumed:
        what += (f"; {len(pairs) - len(missing)} of {len(pairs)} runs finished before: {len(missing)} to run"
                 + (f" ({len(starts)} from their latest checkpoint, at epoch "
                    f"{', '.join(str(epoch) for _, epoch in starts.values())})" if starts else ""))
    interrupted = expired = False
    if missing:
        expired, interrupted = run_missing(exp, folder, configs, missing, starts, plan, what, resumed, address,
                                           callbacks, log, deadline, budget)
    else:
        log(what)
    return choose(exp, folder, configs, seed_list, cut="time budget" if expired else "interrupted" if interrupted
                  else None)


def run_missing(exp, folder, configs, missing, starts, plan, what, resumed, address, callbacks, log, deadline, budget):
    """Run the `missing` (configuration, seed) pairs (`starts`: a cut one's latest checkpoint) on Ray until the
    deadline, after the plan line; returns (the time budget ran out, Ctrl-C or SIGTERM stopped them)."""
    import ray

    from dogs.ray_trainable import DEADLINE_ENV
    from tune import progress
    from tune.callbacks import SearchSession
    from tune.ray_setup import check_resources, concurrency, joins_cluster, start_ray, trials_deadline
    from tune.ray_tuner import time_budget

    s, exp_dir = exp.search, exp.location
    interrupt.catch_sigterm()   # SIGTERM (Slurm, Kubernetes, kill) stops the runs as Ctrl-C does: Tune saves them
    try:   # a time budget's deadline for the runs (dogs.ray_trainable: no epoch starts that would end after it)
        resources = start_ray(address, env={DEADLINE_ENV: repr(trials_deadline(deadline))} if deadline else None,
                              who="re-evaluation")
        interrupt.catch_sigterm()   # again: ray.init installs its own handler (Ray's abort dump, exit 134)
    except KeyboardInterrupt:   # while Ray starts: nothing ran; the same command starts again
        ray.shutdown()
        log(what)
        return False, True
    try:
        check_resources(s, resources, autoscaling=joins_cluster(address))
        # the plan line: what runs, about how long (this machine's measured seconds per epoch, tune.progress)
        slots = concurrency({**s, "samples": len(missing)}, resources)
        epochs = sum(s["epochs"] - (starts[pair][1] if pair in starts else 0) for pair in missing)
        log(f"{what}{'' if resumed else f': {len(missing)} run(s)'}, {slots} at a time: "
            + progress.about(exp.space, epochs, slots, deadline - time.time() if deadline else None, budget))
        storage.write_text(storage.join(folder, PLAN_FILE), json.dumps(plan))
        session = SearchSession(exp_dir=exp_dir)   # the retention callback tells the budget of a saved epoch
        with time_budget(deadline, session.checkpointed) as budget_used:
            run_part(exp_dir, folder, configs, missing, s, resources, callbacks,
                     starts={pair: location for pair, (location, _) in starts.items()}, session=session)
        return budget_used.is_set(), False
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM before Tune took them over: the runs saved so far are kept
        return False, True
    finally:
        ray.shutdown()


def choose(exp, folder, configs, seed_list, cut=None):
    """The Reevaluation of the runs in `folder`: the table, and the best configuration of those with a finished run
    (its finished runs, best first); `cut`: why the runs stopped, if they did."""
    s = exp.search
    runs = read_runs(folder)
    table = results_table(exp, runs, configs, seed_list)
    pairs = [(t, seed) for t in configs for seed in seed_list]
    done = sum(finished(runs.get(pair)) for pair in pairs)
    if done == len(pairs):
        cut = None
    elif cut is None:   # Ctrl-C during Tune's run (it stops as asked), or runs that errored past their retries
        cut = "errored" if all(runs.get(p) is not None and runs[p].status == "ERROR" for p in pairs
                               if not finished(runs.get(p))) else "interrupted"
    result = Reevaluation(folder, table, done == len(pairs), configs=configs, finished=done, planned=len(pairs),
                          cut=cut, compared=compared_on(s["metric"], s["holdout"]))
    if not ranking.finite(table[f"mean {result.compared}"].iloc[0]):
        return result
    result.chosen = table.trial.iloc[0]
    runs_done = [runs[result.chosen, seed] for seed in seed_list if finished(runs.get((result.chosen, seed)))]
    result.runs = ranking.ranked(runs_done, lambda run: run_score(exp, run), s["mode"])
    return result


def checkpoint_of(exp, run):
    """Location of a run's best checkpoint folder (ExperimentError when it kept none)."""
    return kept(exp, run)[1]


def load_runs(exp, result, count=1):
    """[(model, ckpt)] of the chosen configuration's `count` best finished runs, each checked: the epoch and score its
    result.json reports, the config the re-evaluation gave it."""
    return [exp.load(*kept(exp, run), {**result.configs[result.chosen], "seed": run.config["run"][1]})
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
