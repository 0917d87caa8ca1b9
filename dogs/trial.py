"""The Ray Tune trainable: one trial = one `Run`, reported and checkpointed every epoch."""
import logging
import socket
import tempfile
import time
from pathlib import Path

import torch

from . import checkpoint
from .engine import Run


def trial_device():
    """The GPU Ray assigned to this trial (Ray sets CUDA_VISIBLE_DEVICES to it), else the CPU.

    A trial without a GPU never initialises CUDA.
    """
    import ray
    return torch.device("cuda") if ray.get_gpu_ids() else torch.device("cpu")


def trainable(config):
    """Ray Tune function trainable (Ray 2.60: only ray.tune.* APIs; ray.train.* inside Tune breaks trials)."""
    import ray
    from ray import tune
    # resume: a restarted trial (node lost, search resumed, error retried) continues after its last epoch
    # console: Ray logs a line per checkpoint ("Checkpoint successfully created at"); the driver says enough
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    saved = tune.get_checkpoint()
    resume = None
    if saved is not None:
        with saved.as_directory() as folder:
            resume = checkpoint.read(Path(folder))
    run = Run(config, device=trial_device(), resume=resume, log_fn=lambda msg: None)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    # epoch loop: report metrics with a checkpoint of this epoch
    for metrics in run.epochs():
        with tempfile.TemporaryDirectory() as folder:
            checkpoint.save(run.state(), Path(folder) / checkpoint.FILENAME)
            # reported_at: when the epoch ended (Ray's own timestamp is whole seconds), for the real concurrency
            tune.report({**metrics, **where, "reported_at": time.time()},
                        checkpoint=tune.Checkpoint.from_directory(folder))
