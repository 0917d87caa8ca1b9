"""What `--log mlflow` costs the search's driver per epoch: Ray's MLflowLoggerCallback (one log_metric call, one
SQLite transaction, per number) against ours (tune.callbacks: the epoch's numbers in one log_batch).

    python bench/trackers.py                      # 2 trials x 20 epochs into a fresh mlflow.db, ~30 s
    python bench/trackers.py --busy 4             # the same with 4 processes spinning on the CPU meanwhile

Tune warns "... may be a performance bottleneck" when a callback's on_trial_result takes over 0.5 s
(ray.tune.utils.util.warn_if_slow, TUNE_WARN_THRESHOLD_S): four lines an epoch, as a busy machine showed.
The result dict is a real epoch's (a trial's progress.csv row keys and types), no Ray cluster is started.
"""
# ----------------------------------------------------------------------------- setup
import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WARN_S = 0.5   # Tune's default warn_if_slow threshold


def spin(stop):
    """One busy process (the other sessions on a shared machine)."""
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def epoch_result(epoch):
    """One epoch's result as the trainable reports it and Tune adds to it (30 numbers, a few strings)."""
    numbers = ["train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "val_macro_f1", "train_images",
               "val_images", "best_val_acc", "best_epoch", "epoch_time_s", "images_per_s", "started_at",
               "reported_at", "budget_spent", "timestamp", "time_this_iter_s", "time_total_s", "pid",
               "time_since_restore", "iterations_since_restore"]
    result = {key: 0.5 + epoch for key in numbers}
    result.update(epoch=epoch, training_iteration=epoch, should_checkpoint=True, done=False, node_id="a" * 56,
                  hostname="host", node_ip="127.0.0.1", trial_id="0a1b2c3d", date="2026-12-06_04-00-00",
                  checkpoint_dir_name=None,
                  config={"lr": 3e-3, "batch_size": 16, "image_size": 16, "epochs": 20, "holdout": 0.0,
                          "model": "cnn"})
    return result


# ----------------------------------------------------------------------------- measure
def per_epoch_s(callback_class, folder, trials, epochs):
    """Seconds each log_trial_result took, every trial and epoch, into a fresh mlflow.db in `folder`."""
    callback = callback_class(tracking_uri=f"sqlite:///{folder}/mlflow.db", experiment_name="bench")
    callback.setup()
    made = [type("Trial", (), {"config": {"lr": 3e-3, "model": "cnn"}, "__str__": lambda self, i=i: f"trial_{i}"})()
            for i in range(trials)]
    for trial in made:
        callback.log_trial_start(trial)
    took = []
    for epoch in range(1, epochs + 1):
        for trial in made:
            start = time.perf_counter()
            callback.log_trial_result(epoch, trial, epoch_result(epoch))
            took.append(time.perf_counter() - start)
    for trial in made:
        callback.log_trial_end(trial)
    return took


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--busy", type=int, default=0, help="processes spinning on the CPU while it measures")
    args = parser.parse_args()
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from tune.callbacks import GuardedMLflowCallback

    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for process in spinners:
        process.start()
    try:
        print(f"| callback | per epoch: median | max | over {WARN_S} s |\n|---|---|---|---|")
        for label, callback_class in [("Ray's MLflowLoggerCallback", MLflowLoggerCallback),
                                      ("ours (one log_batch)", GuardedMLflowCallback)]:
            with tempfile.TemporaryDirectory() as folder:
                took = per_epoch_s(callback_class, folder, args.trials, args.epochs)
            print(f"| {label} | {statistics.median(took) * 1000:.0f} ms | {max(took) * 1000:.0f} ms | "
                  f"{sum(t > WARN_S for t in took)} of {len(took)} |")
    finally:
        stop.set()
        for process in spinners:
            process.join(timeout=10)


if __name__ == "__main__":
    main()
