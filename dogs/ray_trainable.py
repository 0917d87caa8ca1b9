"""The Ray Tune trainable: one trial = one `Run`, reported and checkpointed every epoch.
"""
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

import torch

from . import checkpoint
from . import progress_bars as bars
from .config import DEFAULTS
from .engine import Run
from .errors import USER_ERROR_KEY, UserError


def trial_device():
    """The GPU Ray assigned to this trial (Ray sets CUDA_VISIBLE_DEVICES to it), else the CPU.

    A trial without a GPU never initialises CUDA.
    """
    import ray
    return torch.device("cuda") if ray.get_gpu_ids() else torch.device("cpu")


# Set by tune.search for a Ray it starts itself: a folder where each trial worker process leaves its pid, and
# `slots` (how many trials run at once). See wait_for_workers.
WORKERS_ENV = "DOGS_TUNE_WORKERS"
WAIT_S = 60.0
_arrived = False

# Set by tune.search under a time budget (in the job's runtime_env, so on every node): the wall-clock time (Unix
# seconds) at which the budget ends. A trial starts no epoch that its longest epoch so far says would end after it.
DEADLINE_ENV = "DOGS_TUNE_DEADLINE"
IDLE_S = 3600.0   # how long a trial out of budget waits for the search to stop it (it stops within an epoch)


def out_of_budget(epoch, epochs, now, longest_epoch_s, deadline):
    """Whether a trial stops for the time budget after `epoch` of `epochs`: it has epochs left, and one as long as
    its longest so far, started now, would end after the deadline (None: no budget)."""
    return deadline is not None and epoch < epochs and now + longest_epoch_s > deadline


def budget_deadline():
    """The search's deadline from the environment (DEADLINE_ENV), or None."""
    value = os.environ.get(DEADLINE_ENV)
    return float(value) if value else None


def wait_for_workers(folder=None, timeout=WAIT_S):
    """The first trial of a worker process waits until a worker is up for every slot (at most `timeout` s).

    Tune (reuse_actors) hands the next trial to the first worker that is free, and drops a worker still
    starting (importing torch takes seconds): with trials shorter than that, a search ran one trial at a
    time whatever its slots. Once every slot's worker is up, each one takes the next trial as it finishes.
    Returns the seconds waited.
    """
    global _arrived
    folder = folder or os.environ.get(WORKERS_ENV)
    if _arrived or not folder or not os.path.isdir(folder):
        return 0.0
    _arrived = True
    start = time.monotonic()
    try:
        Path(folder, f"worker-{os.getpid()}").touch()
        slots = int(Path(folder, "slots").read_text())
        while sum(name.startswith("worker-") for name in os.listdir(folder)) < slots \
                and time.monotonic() - start < timeout:
            time.sleep(0.02)
    except (OSError, ValueError):   # the search is over, or no slots written: nothing to wait for
        pass
    return time.monotonic() - start


def trainable(config, start_from=None):
    """Ray Tune function trainable (Ray 2.60: only ray.tune.* APIs; ray.train.* inside Tune breaks trials).
    `start_from`: a checkpoint dict to continue when Ray has none for the trial (tune.reevaluate: a run cut in an
    earlier part)."""
    # the one-off builds' progress bars: whole lines, which Ray forwards to the search's console
    with bars.drawn_by(bars.Lines):
        run_trial(config, start_from)


def run_trial(config, start_from=None):
    """The trial: resumed from its checkpoint if it has one (else from `start_from`), an epoch reported (with a
    checkpoint) at a time."""
    import ray
    from ray import tune

    # resume: a restarted trial (node lost, search resumed, error retried) continues after its last epoch
    # console: Ray logs a line per checkpoint ("Checkpoint successfully created at"); the driver says enough
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    wait_for_workers()
    saved = tune.get_checkpoint()
    resume = start_from   # Ray's own checkpoint of this trial (a retry) comes first
    if saved is not None:
        with saved.as_directory() as folder:
            resume = checkpoint.read(Path(folder))
    where = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    reported, deadline, longest = False, budget_deadline(), 0.0
    try:
        run = Run(config, device=trial_device(), resume=resume, log_fn=lambda msg: None)
        # epoch loop: report metrics with a checkpoint of this epoch
        started = time.time()
        for metrics in run.epochs():
            with tempfile.TemporaryDirectory() as folder:
                checkpoint.save(run.state(), Path(folder) / checkpoint.FILENAME)
                # the time budget: the next epoch is not started when it would end after the deadline (budget_spent)
                now = time.time()
                longest = max(longest, now - started)   # an epoch: training, evaluation and its checkpoint
                spent = out_of_budget(run.epoch, run.config["epochs"], now, longest, deadline)
                # started_at / reported_at: when the epoch began and ended on this worker (Ray's timestamp is whole
                # seconds, and its time_this_iter_s also counts the previous report's checkpoint upload), for the real
                # concurrency (tune.report.observed_concurrency)
                tune.report({**metrics, **where, "started_at": started, "reported_at": now, "budget_spent": spent},
                            checkpoint=tune.Checkpoint.from_directory(folder))
            reported = True
            if spent:   # out of budget: this epoch's checkpoint is the last; the search stops the trial (tune.ray_tuner)
                wait_to_be_stopped(deadline)
                return
            started = time.time()
    except UserError as err:
        if reported or resume is not None:   # after an epoch: Ray's retry from the checkpoint, as for any error
            raise
        # missing weights, a config that cannot build: every retry would fail the same way (Ray's FailureConfig
        # retries any exception), so the trial ends with one result saying it: no score, its one line
        nan, metric = float("nan"), config.get("metric", DEFAULTS["metric"])
        tune.report({metric: nan, f"best_{metric}": nan, "epoch": 0, **where,
                     USER_ERROR_KEY: f"{type(err).__name__}: {err}", "reported_at": time.time()})


def wait_to_be_stopped(deadline):
    """Idle until the search stops this trial (at most IDLE_S past the deadline): returning would end the trial as
    complete, and a --resume would not continue it."""
    while time.time() < deadline + IDLE_S:
        time.sleep(1.0)
