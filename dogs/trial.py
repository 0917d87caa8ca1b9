"""The Ray Tune trainable: one trial = one `Run`, reported and checkpointed every epoch."""
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

import torch

from . import bars, checkpoint
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


def trainable(config):
    """Ray Tune function trainable (Ray 2.60: only ray.tune.* APIs; ray.train.* inside Tune breaks trials)."""
    from ray.experimental import tqdm_ray

    # the one-off builds' progress bars: drawn on the search's console by Ray, not prefixed per line
    with bars.drawn_by(tqdm_ray.tqdm):
        run_trial(config)


def run_trial(config):
    """The trial: resumed from its checkpoint if it has one, an epoch reported (with a checkpoint) at a time."""
    import ray
    from ray import tune
    # resume: a restarted trial (node lost, search resumed, error retried) continues after its last epoch
    # console: Ray logs a line per checkpoint ("Checkpoint successfully created at"); the driver says enough
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    wait_for_workers()
    saved = tune.get_checkpoint()
    resume = None
    if saved is not None:
        with saved.as_directory() as folder:
            resume = checkpoint.read(Path(folder))
    where = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    reported = False
    try:
        run = Run(config, device=trial_device(), resume=resume, log_fn=lambda msg: None)
        # epoch loop: report metrics with a checkpoint of this epoch
        started = time.time()
        for metrics in run.epochs():
            with tempfile.TemporaryDirectory() as folder:
                checkpoint.save(run.state(), Path(folder) / checkpoint.FILENAME)
                # started_at / reported_at: when the epoch began and ended on this worker (Ray's timestamp is whole
                # seconds, and its time_this_iter_s also counts the previous report's checkpoint upload), for the real
                # concurrency (tune.report.observed_concurrency)
                tune.report({**metrics, **where, "started_at": started, "reported_at": time.time()},
                            checkpoint=tune.Checkpoint.from_directory(folder))
            reported = True
            started = time.time()
    except UserError as err:
        if reported or resume is not None:   # after an epoch: Ray's retry from the checkpoint, as for any error
            raise
        # missing weights, a config that cannot build: every retry would fail the same way (Ray's FailureConfig
        # retries any exception), so the trial ends with one result saying it: no score, its one line
        nan, metric = float("nan"), config.get("metric", DEFAULTS["metric"])
        tune.report({metric: nan, f"best_{metric}": nan, "epoch": 0, **where,
                     USER_ERROR_KEY: f"{type(err).__name__}: {err}", "reported_at": time.time()})
