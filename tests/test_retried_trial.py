"""A trial whose worker is killed mid-search and retried from its last checkpoint keeps its whole history:
result.json (what tune.best ranks) and progress.csv hold every epoch once, and the checkpoint kept as the
trial's best is the best epoch of that whole history."""
import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.fs
import pytest

from dogs import ranking
from dogs.ray_trainable import WORKERS_ENV
from tune import search
from tune.experiment import Experiment, read_trials
from tune.callbacks import CSVLogger, JsonLogger
from conftest import run_main

EPOCHS = 150   # 0.1-0.5 s each on a loaded 2-core machine: the trial outlasts Ray's first copy of its files
SPACE = f"""
search: {{samples: 1, epochs: {EPOCHS}, scheduler: fifo, max_failures: 2, seed: 0, metric: val_loss}}
params:
  model: cnn
  image_size: 16
  batch_size: 16
  lr: 3e-3
"""


def kill_worker_after_a_copy(exp_dir, stop, ahead=3, window=1.5):
    """Kill the trial's worker (SIGKILL, as the OOM killer or a lost node does) right after Ray copied its
    result.json to the experiment folder, once it has saved `ahead` epochs more than that copy holds; on a machine
    so fast that no such moment came before 80% of the epochs, there and then (the retry is then checked, the stale
    copy perhaps not). Returns (pid, lines in the copy, checkpoints saved) at the kill."""
    seen, copied_at, lines = None, None, 0
    while not stop.is_set():
        copy = next(Path(exp_dir).glob("trial_*/result.json"), None)
        stat = copy.stat() if copy else None
        if stat and (stat.st_mtime_ns, stat.st_size) != seen:   # a new copy
            seen, copied_at, lines = (stat.st_mtime_ns, stat.st_size), time.monotonic(), len(copy.read_text().splitlines())
        saved = [int(m.group(1)) + 1 for p in Path(exp_dir).glob("trial_*/checkpoint_*")
                 if (m := re.fullmatch(r"checkpoint_(\d+)", p.name))]
        workers = os.environ.get(WORKERS_ENV)
        pids = [int(p.name.split("-")[1]) for p in Path(workers).glob("worker-*")] if workers else []
        after_a_copy = copied_at and time.monotonic() - copied_at < window and lines and max(saved) >= lines + ahead
        if pids and saved and (after_a_copy or max(saved) >= 0.8 * EPOCHS):
            os.kill(pids[0], signal.SIGKILL)
            return pids[0], lines, max(saved)
        time.sleep(0.01)


class FakeTrial:
    """What Ray's loggers read of a trial: its staging folder on the driver, its folder in the experiment, its
    config, and whether it has a checkpoint to start from (a retry, or a resumed search)."""

    def __init__(self, staging, experiment):
        self.local_path, self.config, self.checkpoint = str(staging / "trial_a"), {"lr": 0.1}, None
        self.storage = SimpleNamespace(trial_fs_path=str(experiment / "trial_a"),
                                       storage_filesystem=pyarrow.fs.LocalFileSystem())
        self.init_local_path()   # Ray makes it before a logger sees the trial

    def init_local_path(self):
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


def epochs_in(logger, folder):
    if isinstance(logger, JsonLogger):
        return [json.loads(line)["epoch"] for line in (folder / "result.json").read_text().splitlines()]
    return pd.read_csv(folder / "progress.csv").epoch.tolist()


@pytest.mark.parametrize("make", [JsonLogger, CSVLogger])
def test_a_retried_trial_continues_its_own_log_and_a_resumed_search_starts_from_the_saved_copy(make, tmp_path):
    staging, experiment = tmp_path / "staging", tmp_path / "experiment"
    logger, trial = make(), FakeTrial(staging, experiment)
    logger.on_trial_start(iteration=0, trials=[trial], trial=trial)
    for epoch in (1, 2, 3, 4):
        logger.on_trial_result(iteration=epoch, trials=[trial], trial=trial, result={"epoch": epoch})
        if epoch == 2:   # Ray saves the experiment state: the staging folder is copied to the experiment folder
            shutil.copytree(staging, experiment, dirs_exist_ok=True)
    # the worker dies after epoch 4; Ray retries the trial from its checkpoint in the same driver
    logger.on_trial_error(iteration=4, trials=[trial], trial=trial)
    trial.checkpoint = "checkpoint_000003"
    logger.on_trial_start(iteration=4, trials=[trial], trial=trial)
    logger.on_trial_result(iteration=5, trials=[trial], trial=trial, result={"epoch": 5})
    logger.on_trial_complete(iteration=5, trials=[trial], trial=trial)
    assert epochs_in(logger, staging / "trial_a") == [1, 2, 3, 4, 5]
    # a resumed search (a new driver, an empty staging folder) starts from the experiment folder's copy
    resumed, again = make(), FakeTrial(tmp_path / "staging2", experiment)
    again.checkpoint = "checkpoint_000001"
    resumed.on_trial_start(iteration=2, trials=[again], trial=again)
    resumed.on_trial_result(iteration=3, trials=[again], trial=again, result={"epoch": 3})
    resumed.on_trial_complete(iteration=3, trials=[again], trial=again)
    assert epochs_in(resumed, tmp_path / "staging2" / "trial_a") == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_and_retried_trial_keeps_every_epoch_and_its_best_checkpoint(tiny_imagefolder, tmp_path, monkeypatch):
    # Ray saves its experiment state (and copies the trials' logs to the experiment folder) every 15 s, as in a
    # long search, and the worker dies within 1.5 s after a copy, a few epochs after it: the retried trial starts
    # (a new worker process: 5-10 s on a loaded machine) before the next copy, from the copy that misses them
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "15")
    (tmp_path / "space.yaml").write_text(SPACE)
    exp_dir = tmp_path / "runs" / "killed"
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=lambda: killed.append(kill_worker_after_a_copy(exp_dir, stop)), daemon=True)
    watcher.start()
    try:
        code, out, err = run_main(search, ["--space", str(tmp_path / "space.yaml"), "--data", str(tiny_imagefolder),
                                           "--storage", str(tmp_path / "runs"), "--name", "killed",
                                           "--set", f"cache_dir={tmp_path / 'cache'}"])
    finally:
        stop.set()
        watcher.join(5)
    print(out, err)
    assert code == 0, out + err
    assert killed and killed[0], "the worker was never killed: the test tested nothing"
    print("killed pid %d: the experiment folder's copy had %d epochs, the trial had saved %d" % killed[0])

    (trial,) = read_trials(exp_dir)
    assert trial.status == "TERMINATED", out + err
    # every epoch, in result.json as in progress.csv (an epoch the killed worker saved but Ray had not yet
    # registered runs again: its later run counts, as tune.experiment reads it)
    epochs = [r["epoch"] for r in trial.results]
    assert epochs == list(range(1, EPOCHS + 1)), epochs
    progress = pd.read_csv(Path(trial.path) / "progress.csv")
    assert sorted(set(progress.epoch)) == epochs
    # the kept "best" is the best epoch of the whole history (of equal ones the later, as retention and tune.best)
    # (val_loss: it moves every epoch, where val_acc on these easy shapes is 1.0 from the first and the best the last)
    best = ranking.best(trial.results, lambda r: r["val_loss"], "min", ties="last")
    kept = Experiment(exp_dir, {"search": {"metric": "val_loss", "mode": "min"}}).checkpoint_result(trial)
    assert kept is not None and kept["epoch"] == best["epoch"], (kept, best)
    assert (Path(trial.path) / best["checkpoint_dir_name"]).is_dir()
    print(f"best epoch {best['epoch']} of {EPOCHS}, kept {sorted(trial.checkpoints)}")
    # the worker really died: the trial's epochs ran in the killed worker, then in another
    pids = [r["pid"] for r in trial.results]
    assert pids[0] == killed[0][0] and pids[-1] != killed[0][0], pids
