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


@pytest.fixture(scope="module")
def reevaluated(tiny_imagefolder, tmp_path_factory):
    """A 3-trial search, re-evaluated (3 x 3) once interrupted after 3 runs and once continued by tune.best."""
    folder = tmp_path_factory.mktemp("reevaluate")
    (folder / "space.yaml").write_text(SPACE)
    code, out, err = run_main(search, ["--space", str(folder / "space.yaml"), "--data", str(tiny_imagefolder),
                                       "--storage", str(folder / "runs"), "--name", "r"])
    assert code == 0, out[-3000:] + err[-3000:]
    exp_dir = folder / "runs" / "r"
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
    assert not first.complete and first.chosen is None
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
    # runs are named by their configuration's rank and seed (tune.names), never Ray's <hex>_00000
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
    chosen = next(line for line in out.splitlines() if line.startswith("Chosen:")).split()[5]
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
    assert "Re-evaluation interrupted: run the same command again to continue it" in console, console[-3000:]
    assert "Aborted" not in console and "SIGTERM received" not in console and "Traceback" not in console, console[-3000:]
