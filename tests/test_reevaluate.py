"""tune.best --retrain --top K --seeds N: the best configurations re-evaluated with several seeds on Ray."""
import json
import os
import re
import signal
import statistics
from pathlib import Path

import pytest
from ray import tune as ray_tune

from dogs import checkpoint
from tune import best, reevaluate, report, search
from tune.experiment import Experiment, read_trials
from conftest import run_main

pytestmark = pytest.mark.slow   # multi-process Ray: a search, then 9 runs on a local Ray

# 3 distinct configurations x 2 epochs of the CNN at 16 px
SPACE = """
search: {samples: 3, epochs: 2, grace_period: 2, seed: 0}
params:
  model: cnn
  image_size: 16
  batch_size: 16
  lr: {loguniform: [1e-3, 1e-2]}
"""


class StopOnce(ray_tune.Callback):
    """Ctrl-C, as Tune takes it (SIGUSR1), once `after` runs have finished; once only (a marker file)."""

    def __init__(self, after, marker):
        self.after, self.marker, self.done = after, str(marker), 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.done == self.after and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGUSR1)


def finished_runs(folder):
    """{run folder: (result.json text, its mtime)} of the finished runs of every part."""
    return {str(run.path): (Path(run.path, "result.json").read_text(), Path(run.path, "result.json").stat().st_mtime_ns)
            for run in reevaluate.read_runs(folder).values() if run.status == "TERMINATED"}


def searched(folder, space, data, name):
    """The experiment folder of a search of `space` (YAML text) on `data`, run in `folder`."""
    (folder / "space.yaml").write_text(space)
    code, out, err = run_main(search, ["--space", str(folder / "space.yaml"), "--data", str(data),
                                       "--storage", str(folder / "runs"), "--name", name])
    assert code == 0, out[-3000:] + err[-3000:]
    return folder / "runs" / name


@pytest.fixture(scope="module")
def reevaluated(tiny_imagefolder, tmp_path_factory):
    """A 3-trial search, re-evaluated (3 x 3) once interrupted after 3 runs and once continued by tune.best."""
    folder = tmp_path_factory.mktemp("reevaluate")
    exp_dir = searched(folder, SPACE, tiny_imagefolder, "r")
    # interrupted: Tune stops after the third run finished
    first = reevaluate.reevaluate(Experiment.open(str(exp_dir)), 3, 3, callbacks=[StopOnce(3, folder / "stopped")], log=lambda _: None)
    before = finished_runs(first.folder)
    # continued by the command: only what did not finish runs
    code, out, err = run_main(best, ["--experiment", str(exp_dir), "--retrain", "--top", "3", "--seeds", "3",
                                     "--submit", "--out", str(folder / "out")])
    assert code == 0, out[-3000:] + err[-3000:]
    return {"dir": exp_dir, "first": first, "before": before, "out": out, "handed": folder / "out",
            "folder": Path(first.folder)}


def test_interrupted_reevaluation_continues_and_redoes_no_finished_run(reevaluated):
    first, before = reevaluated["first"], reevaluated["before"]
    assert not first.complete and first.cut == "interrupted" and first.finished == len(before)
    # cut, it still chooses among the configurations with a finished run
    assert first.chosen in first.configs and all(reevaluate.finished(run) for run in first.runs)
    assert 3 <= len(before) < 9, before.keys()
    assert f"{len(before)} of 9 runs finished before: {9 - len(before)} to run" in reevaluated["out"]
    after = finished_runs(reevaluated["folder"])
    assert len(after) == 9   # every (configuration, seed) finished once
    for path, (text, mtime) in before.items():
        assert after[path] == (text, mtime), f"{path} ran again"
    runs = reevaluate.read_runs(reevaluated["folder"])
    assert sorted({trial for trial, _ in runs}) == sorted(first.configs) and {seed for _, seed in runs} == {1, 2, 3}
    for run in runs.values():
        assert [r["epoch"] for r in run.results] == [1, 2]


def test_runs_ran_in_parallel_on_the_search_resources(reevaluated):
    # the second part ran the rest: 2 CPUs, 1 CPU per run (the search's default) -> 2 at a time
    part = max(reevaluated["folder"].glob("part-*"), key=lambda p: reevaluate.part_number(p.name))
    mean, most, _ = report.observed_concurrency(read_trials(str(part)))
    assert most >= 2, (mean, most)


def test_table_ranks_by_mean_and_the_chosen_best_seed_is_handed_over(reevaluated):
    out, folder = reevaluated["out"], reevaluated["folder"]
    runs = reevaluate.read_runs(folder)
    # the means, recomputed from the runs' result.json: the chosen configuration has the best (ties: search rank)
    configs = list(reevaluated["first"].configs)
    means = {t: statistics.fmean(max(r["val_acc"] for r in runs[t, seed].results) for seed in (1, 2, 3))
             for t in configs}
    chosen = max(configs, key=lambda t: means[t])   # max keeps the first of equal ones: the search's order
    assert re.search(rf"Chosen: the configuration of trial #\d+ {chosen} \(mean val_acc {means[chosen]:.4f}", out), out
    header = next(line for line in out.splitlines() if "search_rank" in line)
    assert header.split() == ["search_rank", "trial", "lr", "search_best_val_acc", "mean", "val_acc", "sd", "runs",
                              "seed", "1", "seed", "2", "seed", "3"]
    # its best seed's checkpoint is best.pt, with a submission
    seeds = {seed: max(r["val_acc"] for r in runs[chosen, seed].results) for seed in (1, 2, 3)}
    best_seed = max((1, 2, 3), key=lambda seed: seeds[seed])
    handed = checkpoint.read(reevaluated["handed"] / "best.pt")
    assert handed["config"]["seed"] == best_seed and handed["config"]["lr"] == reevaluated["first"].configs[chosen]["lr"]
    assert handed["metrics"]["val_acc"] == seeds[best_seed]
    # runs are named by their configuration's rank and seed (tune.experiment), never Ray's <hex>_00000
    rank = configs.index(chosen) + 1
    assert f"run rank{rank}-seed{best_seed}'s checkpoint" in out
    assert re.search(r"^rank[123]-seed[123]  completed 2 epochs", out, re.MULTILINE)
    assert not re.search(r"\b[0-9a-f]{5}_\d{5}\b", out)   # Ray's trial id, e.g. cc59c_00000
    assert (reevaluated["handed"] / "submission.csv").is_file()


def test_ensemble_of_seeds_and_train_on_val_after_the_choice(reevaluated, tmp_path):
    # the re-evaluation is complete: both reuse it (no run again), then hand over
    exp_dir = str(reevaluated["dir"])
    code, out, err = run_main(best, ["--experiment", exp_dir, "--retrain", "--top", "--seeds", "--submit",
                                     "--ensemble", "3", "--out", str(tmp_path / "ens")])
    assert code == 0, out[-3000:] + err[-3000:]
    assert "9 of 9 runs finished before: 0 to run" in out and "ensemble of 3" in out
    code, out, err = run_main(best, ["--experiment", exp_dir, "--retrain", "--top", "3", "--seeds", "3",
                                     "--train-on-val", "--out", str(tmp_path / "tov")])
    assert code == 0, out[-3000:] + err[-3000:]
    chosen = re.search(r"^Chosen: the configuration of trial (?:#\d+ )?(\S+) ", out, re.M).group(1)   # #N id
    retrained = checkpoint.read(tmp_path / "tov" / "best.pt")
    assert "Retraining the chosen config for 2 epochs on Train + Validation" in out
    assert retrained["config"]["lr"] == reevaluated["first"].configs[chosen]["lr"]


def test_mistakes_are_one_line_before_anything_runs(reevaluated, tmp_path):
    exp_dir = str(reevaluated["dir"])
    for argv, message in [
        (["--top", "3"], "--top and --seeds choose what --retrain trains: they need --retrain"),
        (["--retrain", "--top", "3", "--seeds", "2", "--submit", "--ensemble", "3"], "--ensemble 3 with --top"),
        (["--retrain", "--top", "0"], "argument --top: 0 is out of range; allowed: an integer >= 1"),
        (["--retrain", "--top", "2", "--seeds", "nan"], "argument --seeds: 'nan' is not an integer"),
        (["--retrain", "--top", "4"], "--top 4, but the search has only 3 distinct configuration(s)"),
        (["--address", "127.0.0.1:1"], "--address is where --top runs"),
        (["--retrain", "--top", "--best-seed", "--ensemble", "2"], "--best-seed hands over the chosen configuration's"),
        (["--submit", "--best-seed"], "--best-seed picks among the seeds of --top's chosen configuration"),
        (["--retrain", "--top", "--best-seed", "--train-on-val"], "--best-seed hands over a seed's checkpoint"),
        (["--submit", "--time-budget", "5m"], "--time-budget bounds --top's re-evaluation: it needs --retrain --top"),
        (["--retrain", "--top", "--time-budget", "5m", "--train-on-val"], "then run --train-on-val without"),
        (["--retrain", "--top", "--time-budget", "0s"], "argument --time-budget: '0s' is not positive"),
        (["--retrain", "--top", "--time-budget", "soon"], "argument --time-budget: 'soon' is not a duration"),
    ]:
        code, out, err = run_main(best, ["--experiment", exp_dir, "--out", str(tmp_path / "x"), *argv])
        assert code == 2 and err.startswith("dogs-best: error: ") and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1
    # another plan in the same folder (here: its plan file says other trials) is refused, naming the folder
    plan = reevaluated["folder"] / reevaluate.PLAN_FILE
    saved = plan.read_text()
    try:
        plan.write_text(json.dumps({"trials": ["other"], "seeds": [1, 2, 3]}))
        code, out, err = run_main(best, ["--experiment", exp_dir, "--retrain", "--top", "--out", str(tmp_path / "y")])
        assert code == 2 and "move that folder away" in err, err
    finally:
        plan.write_text(saved)


def test_sigterm_during_retrain_top_stops_like_ctrl_c(tiny_imagefolder, tmp_path):
    """SIGTERM (Slurm, Kubernetes, kill) while the re-evaluation's runs train: the command's own "run the same
    command again" line and exit 143, as tune.search (was: Ray's abort dump, exit 134)."""
    import subprocess
    import sys
    import time

    # 20 epochs a run: the re-evaluation trains for tens of seconds, so the signal lands while runs train (with 2
    # epochs it could end before Ray first copied a run's result.json into the experiment folder)
    (tmp_path / "space.yaml").write_text(SPACE.replace("samples: 3", "samples: 2").replace("image_size: 16", "image_size: 64")
                                         .replace("epochs: 2, grace_period: 2", "epochs: 20, grace_period: 20"))
    code, out, err = run_main(search, ["--space", str(tmp_path / "space.yaml"), "--data", str(tiny_imagefolder),
                                       "--storage", str(tmp_path / "runs"), "--name", "t"])
    assert code == 0, out[-3000:] + err[-3000:]
    log = tmp_path / "best.log"
    cmd = [sys.executable, "-m", "tune.best", "--experiment", str(tmp_path / "runs" / "t"), "--retrain", "--top", "2",
           "--seeds", "2", "--out", str(tmp_path / "out")]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    searched = set((tmp_path / "runs" / "t").rglob("result.json"))
    try:   # once a run has reported an epoch (a new result.json with a line)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not any(
                f not in searched and f.stat().st_size for f in (tmp_path / "runs" / "t").rglob("result.json")):
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    console = log.read_text()
    assert status == 143, console[-3000:]
    assert ("Re-evaluation interrupted before any run finished (0 of 4): nothing handed over; run the same command "
            "again to continue it") in console, console[-3000:]
    assert "Aborted" not in console and "SIGTERM received" not in console and "Traceback" not in console, console[-3000:]


# 2 configurations x 2 epochs, one run at a time (max_concurrent: the re-evaluation's slots too): a budget that ends
# before the first epoch does lets exactly one run train one epoch, whatever the machine
ONE_AT_A_TIME = SPACE.replace("samples: 3", "samples: 2").replace("seed: 0}", "seed: 0, max_concurrent: 1}")


def epochs_by_part(folder, pair):
    """[(part, [epochs its result.json reports])] of one (configuration, seed) run, in part order."""
    out = []
    for part in sorted(Path(folder).glob("part-*"), key=lambda p: reevaluate.part_number(p.name)):
        for trial in read_trials(str(part)):
            if tuple(trial.config.get("run", ())) == pair:
                out.append((part.name, [r["epoch"] for r in trial.results]))
    return out


@pytest.fixture(scope="module")
def budgeted(tiny_imagefolder, tmp_path_factory):
    """A 2-trial search; `tune.best --retrain --top 2 --seeds 2 --time-budget 1s` twice (cut, then cut again), then
    the same command without a budget, then --best-seed: each one's (exit code, stdout, stderr) and the runs after."""
    folder = tmp_path_factory.mktemp("budgeted")
    exp_dir = searched(folder, ONE_AT_A_TIME, tiny_imagefolder, "b")
    command = ["--experiment", str(exp_dir), "--retrain", "--top", "2", "--seeds", "2"]
    steps, runs = {}, {}
    for step, more in [("none finished", ["--time-budget", "1s"]), ("one finished", ["--time-budget", "1s"]),
                       ("complete", []), ("best seed", ["--best-seed"])]:
        steps[step] = run_main(best, [*command, *more, "--out", str(folder / step.replace(" ", "-"))])
        runs[step] = reevaluate.read_runs(reevaluate.folder_of(str(exp_dir), 2, 2))
    return {"dir": exp_dir, "steps": steps, "runs": runs, "out": folder,
            "folder": Path(reevaluate.folder_of(str(exp_dir), 2, 2))}


def test_a_budget_that_ends_before_any_run_finished_is_one_line_and_writes_nothing(budgeted):
    code, out, err = budgeted["steps"]["none finished"]
    assert code == 1, out[-3000:] + err[-3000:]
    # the plan line, before any run: what runs, and about how long at the search's measured seconds per epoch
    plan = next(line for line in out.splitlines() if line.startswith("Re-evaluating the 2 best"))
    assert "4 run(s), 1 at a time: about " in plan and "(8 epochs at most)" in plan, plan
    assert "s per trial-epoch (measured here on" in plan and "the time budget 1s ends it sooner" in plan, plan
    lines = [line for line in out.splitlines() if "before any run finished" in line]
    assert lines == ["Time budget 1s used up before any run finished (0 of 4): nothing handed over; run the same "
                     "command again to continue it (cut runs continue from their latest checkpoint)"], out[-3000:]
    assert not (budgeted["out"] / "none-finished").exists()   # nothing half-written
    # the one run that started stopped at the epoch boundary with its checkpoint kept; the others never started
    started = {pair: run for pair, run in budgeted["runs"]["none finished"].items() if run.results}
    assert len(started) == 1, started
    [(pair, run)] = started.items()
    assert [r["epoch"] for r in run.results] == [1] and run.status == "UNFINISHED"
    assert reevaluate.latest(run)[1] == 1


def test_a_cut_run_continues_from_its_checkpoint_and_the_cut_hands_over_what_finished(budgeted):
    code, out, err = budgeted["steps"]["one finished"]
    assert code == 0, out[-3000:] + err[-3000:]
    [(pair, _)] = [(p, r) for p, r in budgeted["runs"]["none finished"].items() if r.results]
    assert "1 from their latest checkpoint, at epoch 1" in out, out[-3000:]
    assert "  completed 2 epochs  " in out   # its console line counts the epochs of both parts (tune.progress)
    # resumed: part-2 trained epoch 2 only (not epoch 1 again), and finished
    assert epochs_by_part(budgeted["folder"], pair)[:2] == [("part-1", [1]), ("part-2", [2])]
    after = budgeted["runs"]["one finished"]
    assert reevaluate.finished(after[pair]) and [r["epoch"] for r in after[pair].results] == [1, 2]
    assert sum(reevaluate.finished(run) for run in after.values()) == 1
    # it hands over that run (its configuration, its seed) and says how much of the plan ran
    assert (f"Time budget 1s used up: 1 of 4 runs finished; handing over the best of what finished: the "
            f"configuration of trial {pair[0]}, 1 of its 1 finished seed(s)") in out, out[-3000:]
    handed = checkpoint.read(budgeted["out"] / "one-finished" / "best.pt")
    assert handed["config"]["seed"] == pair[1] and handed["epoch"] in (1, 2)
    assert (budgeted["out"] / "one-finished" / "submission.csv").is_file()


def test_rerun_finishes_the_plan_training_no_epoch_twice_and_hands_over_the_seeds_averaged(budgeted):
    code, out, err = budgeted["steps"]["complete"]
    assert code == 0, out[-3000:] + err[-3000:]
    assert "1 of 4 runs finished before: 3 to run" in out, out[-3000:]
    runs = budgeted["runs"]["complete"]
    assert len(runs) == 4 and all(reevaluate.finished(run) for run in runs.values())
    for pair in runs:   # over every part, each epoch trained exactly once
        epochs = [e for _, part in epochs_by_part(budgeted["folder"], pair) for e in part]
        assert sorted(epochs) == [1, 2], (pair, epochs_by_part(budgeted["folder"], pair))
    # the default hand-over: the chosen configuration's 2 seeds averaged, its best seed as best.pt
    chosen = re.search(r"^Chosen: the configuration of trial (?:#\d+ )?(\S+) ", out, re.M).group(1)   # #N id
    exp = Experiment.open(str(budgeted["dir"]))
    scores = {seed: reevaluate.run_score(exp, runs[chosen, seed]) for seed in (1, 2)}
    best_seed = max((1, 2), key=lambda seed: scores[seed])   # of equal ones the first: ranking's order
    other = 3 - best_seed
    assert checkpoint.read(budgeted["out"] / "complete" / "best.pt")["config"]["seed"] == best_seed
    assert f"  ensemble     + seed {other}: {reevaluate.checkpoint_of(exp, runs[chosen, other])}" in out, out[-3000:]
    assert "ensemble of 2" in out


def test_best_seed_hands_over_the_best_seed_alone(budgeted):
    code, out, err = budgeted["steps"]["best seed"]
    assert code == 0, out[-3000:] + err[-3000:]
    assert "4 of 4 runs finished before: 0 to run" in out and "ensemble" not in out, out[-3000:]
    complete = budgeted["steps"]["complete"][1]
    assert checkpoint.read(budgeted["out"] / "best-seed" / "best.pt")["config"]["seed"] == checkpoint.read(
        budgeted["out"] / "complete" / "best.pt")["config"]["seed"]
    assert next(line for line in out.splitlines() if line.startswith("Chosen:")) in complete
