"""Ray for a search: auth mode, the environment Ray and Tune read, a local Ray or a cluster joined, the resources
a search may ask of it, and how many trials run at once (the slots)."""
import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from dogs.errors import UserError


STOP_S = 10   # Ray's stop after the last epoch (Tune saves its state, the trials' actors end): ~10 s on a 2-core CPU


def trials_deadline(deadline):
    """The deadline the trials see: the budget's, less the time Ray takes to stop after their last epoch (STOP_S,
    at most a fifth of the time left), so that the whole command ends within the budget plus one epoch."""
    return deadline - min(STOP_S, max(0.0, deadline - time.time()) / 5)

def joins_cluster(address):
    """Whether the search joins a running Ray cluster (--address or $RAY_ADDRESS) rather than starting its own."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def set_environment(address, verbose=False):
    """The environment variables Ray and Tune read when imported or started, each only when not set already."""
    if not verbose:
        # Tune's old output engine at verbose 0 prints nothing; the new one prints a "Configuration for
        # experiment" box and "View detailed results here" whatever the verbosity (our progress line says it)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not joins_cluster(address):
        # a local Ray would listen on every interface; keep it on 127.0.0.1 (Ray reads this when imported)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # should anything in a trial draw Ray's tqdm_ray bars (ours are lines, dogs.bars), Ray does not replace
    # builtins.print in this process: a bar left open by a trial that died would be redrawn around every later print
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    # the trials' lines (their build progress, dogs.bars.Lines) without Ray's coloured `(pid=...)` prefix
    os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")
    # Ray's own TensorBoard writer off (ours writes curves + HParams); JSON/CSV loggers are added explicitly
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Ray's record of each trial's checkpoints (in every save of the experiment state) holds only their score:
    # it keeps every epoch's (tune.callbacks deletes the folders), not the whole result of each
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")


def set_auth_mode(address):
    """RAY_AUTH_MODE, explicit: Ray 2.60 turns token auth on by default, nodes joined by `ray start` don't."""
    if "RAY_AUTH_MODE" not in os.environ:
        has_token = (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                     or (Path.home() / ".ray" / "auth_token").is_file())
        # a local Ray started here listens for this machine only (no dashboard); a cluster decides itself
        os.environ["RAY_AUTH_MODE"] = "token" if address and has_token else "disabled"
    return os.environ["RAY_AUTH_MODE"]


@contextlib.contextmanager
def worker_folder(address):
    """The folder where a local Ray's trial workers wait for each other before their first trial
    (dogs.ray_trainable.wait_for_workers), named in the environment Ray's processes inherit; None when joining a cluster."""
    from dogs.ray_trainable import WORKERS_ENV   # here: dogs.ray_trainable imports torch

    if joins_cluster(address):
        yield None
        return
    workers = tempfile.mkdtemp(prefix="dogs-tune-workers-")
    os.environ[WORKERS_ENV] = workers
    try:
        yield workers
    finally:
        shutil.rmtree(workers, ignore_errors=True)
        os.environ.pop(WORKERS_ENV, None)


def worker_setup_hook():
    """Each Ray worker's set-up without -v (ray.init's worker_process_setup_hook). A nested function, so that Ray
    ships it by value: it needs nothing of this project on the node."""
    def quiet_worker():
        """Ray Train's INFO lines (a "Checkpoint successfully created" per trial-epoch) stay out of the console
        (warnings and errors still show); and a worker that Ray stops with SIGTERM while Python runs a finalizer
        (Ray's handler raises SystemExit there, which Python can only print as "Exception ignored ... Traceback")
        says so in one line instead of a traceback among the search's summary."""
        import logging
        import os
        import sys

        logging.getLogger("ray.train").setLevel(logging.WARNING)
        default = sys.unraisablehook

        def one_line(unraisable):
            if isinstance(unraisable.exc_value, SystemExit):   # the worker is being stopped: nothing went wrong
                print(f"(worker pid {os.getpid()} stopped by Ray while cleaning up: SystemExit ignored)", file=sys.stderr)
            else:
                default(unraisable)

        sys.unraisablehook = one_line

    return quiet_worker


def start_ray(address, verbose=False, env=None, who="search"):
    """Start a new Ray here (dashboard off, loopback only), or join the cluster at `address`; its resources. Every
    command starts Ray this way (`who`: the search, its re-evaluation, the server: named in the line it prints;
    `verbose`: Ray's own INFO lines too; `env`: variables set in every worker).

    Never Ray's default `ray.init()`: that joins a Ray left running on this machine by `ray start` (or, after
    one died without `ray stop`, retries its dead address for minutes); address="local" always starts a new one.
    """
    import ray   # here: Ray reads the environment set_environment sets when it is imported

    source = "--address" if address else "RAY_ADDRESS in the environment"
    address = address or os.environ.get("RAY_ADDRESS")

    mode = set_auth_mode(address)
    # every worker's environment (`env`: e.g. the time budget's deadline, dogs.ray_trainable), on every node
    runtime_env = {**({} if verbose else {"worker_process_setup_hook": worker_setup_hook()}),
                   **({"env_vars": env} if env else {})} or None
    if not verbose:
        quiet_driver()
    if address:
        # said before: Ray retries an address it cannot reach for minutes, with its own lines only
        print(f"Joining the Ray cluster at {address} ({source}; without it, the {who} starts a Ray of its own "
              "on 127.0.0.1) ...", flush=True)
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        print(f"Joined the Ray cluster at {address} (RAY_AUTH_MODE={mode})")
    else:
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", runtime_env=runtime_env,
                 logging_level=logging.INFO if verbose else logging.WARNING)   # "Started a local Ray instance"
        print(f"Started a local Ray on 127.0.0.1 for this {who} only (RAY_AUTH_MODE={mode}, dashboard off; "
              "a running Ray cluster is joined only with --address)")
    return ray.cluster_resources()


class _NotOurs(logging.Filter):
    """Drops the lines of Ray's that tell what our own lines tell better: its resume hint (`Tuner.restore(...)`,
    a Python call; the search prints its --resume command), the list of trials not completed (the summary
    counts them) and its "Stop signal received" (a time budget's stop, or Ctrl-C: the summary says which)."""

    HIDDEN = ("Experiment has been interrupted", "Trials did not complete", "Stop signal received",
              "Failed to fetch metrics for")   # a trial stopped before its first result (the summary counts it)

    def filter(self, record):
        return not str(record.msg).startswith(self.HIDDEN)


def quiet_driver():
    """Without -v: Ray Tune's INFO lines ("Wrote the latest version of all result files ...") and its resume hint
    stay out of the console; its warnings and errors still show."""
    tune_log = logging.getLogger("ray.tune")
    tune_log.setLevel(logging.WARNING)
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NotOurs) for f in logger.filters):
            logger.addFilter(_NotOurs())
    # ASHA's rung percentile over trials that reported no score (NaN: diverged, or failed before an epoch)
    warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)


def check_resources(s, resources, autoscaling=False):
    """Refuse requests this cluster can never meet: Ray would leave those trials PENDING forever.

    A cluster we joined (`--address`) may add nodes later (the autoscaler): there it is only a warning.
    """
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    have = f"this Ray cluster has CPU={cpus:g}, GPU={gpus:g}"
    if autoscaling:
        if s["gpus_per_trial"] > gpus or s["cpus_per_trial"] > cpus:
            print(f"Warning: {have} now; trials stay PENDING until the autoscaler adds nodes that fit "
                  f"{s['cpus_per_trial']:g} CPU + {s['gpus_per_trial']:g} GPU per trial")
        return
    if s["gpus_per_trial"] > 0 and gpus == 0:
        raise UserError(f"--gpus-per-trial {s['gpus_per_trial']:g} asks for a GPU but {have}; Ray would leave every "
                        "trial PENDING forever. Use --gpus-per-trial 0, or join a cluster with GPUs (--address).")
    if s["gpus_per_trial"] > gpus:
        raise UserError(f"--gpus-per-trial {s['gpus_per_trial']:g} is more than {have}.")
    if s["cpus_per_trial"] > cpus:
        raise UserError(f"--cpus-per-trial {s['cpus_per_trial']:g} is more than {have}.")


def concurrency(s, resources):
    """How many trials can run at the same time: the slots. Tune is given as many (max_concurrent_trials), so it
    keeps that many trials pending, and a worker for each starts with the first trials, whatever their length."""
    slots = int(resources.get("CPU", 1) // s["cpus_per_trial"])
    if s["gpus_per_trial"] > 0:
        slots = min(slots, int(round(resources.get("GPU", 0) / s["gpus_per_trial"], 6)))
    return max(1, min(slots, s["samples"], s["max_concurrent"] or slots))
