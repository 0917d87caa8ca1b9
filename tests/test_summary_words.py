"""What the summary and trials.csv say (issue #17): an integer parameter is an integer even where some trials
lack it (a conditional one), and the trials said to run at once never exceed what ran at once."""
import io

import pandas as pd

from tune import experiment, report, spaces

SPACE = {"search": {"samples": 3, "epochs": 2},
         "params": {"model": {"choice": ["cnn", "resnet18"]},
                    "unfreeze": {"int": [0, 4], "when": {"model": "resnet18"}},   # absent from the cnn trials
                    "lr": {"loguniform": [1e-4, 1e-2]}}}


def trial(trial_id, config, scores, start=0.0, epoch_s=1.0):
    """A finished trial: one result per epoch, each reported epoch_s after the one before, from `start`."""
    results = [{"epoch": i + 1, "training_iteration": i + 1, "val_acc": v, "time_this_iter_s": epoch_s,
                "reported_at": start + (i + 1) * epoch_s, "time_total_s": (i + 1) * epoch_s}
               for i, v in enumerate(scores)]
    return experiment.Trial(trial_id=trial_id, path=f"/x/trial_{trial_id}", config={"epochs": 2, **config},
                            results=results)


def test_an_integer_parameter_stays_an_integer_in_trials_csv_and_the_best_config():
    space = spaces.validate(SPACE)
    trials = [trial("a", {"model": "resnet18", "unfreeze": 0, "lr": 1e-3}, [0.5, 0.9]),
              trial("b", {"model": "cnn", "lr": 1e-3}, [0.4, 0.5]),
              trial("c", {"model": "resnet18", "unfreeze": 3.0, "lr": 1e-3}, [0.3, 0.4])]   # as a float sampler gave it
    table = experiment.Experiment("/x", space, trials).table()
    csv = pd.read_csv(io.StringIO(table.to_csv(index=False)), dtype=str, keep_default_na=False)
    assert list(csv.unfreeze) == ["0", "", "3"]
    best = table.iloc[0]
    assert {name: report.plain(best[name]) for name in ("unfreeze",)} == {"unfreeze": 0}
    assert type(report.plain(best["unfreeze"])) is int


def test_the_most_trials_at_once_counts_epochs_that_ran_at_once_not_whole_trial_spans():
    """Two slots: a ran its first epoch, errored, and its retry ran last; b and c ran together in between. Their
    spans overlap three deep (a's covers the gap), but never more than two epochs ran at once."""
    a = trial("a", {}, [0.1], start=100, epoch_s=2)
    a.results.append({**a.results[0], "epoch": 2, "reported_at": 302.0})
    b, c = trial("b", {}, [0.2, 0.3], start=102, epoch_s=2), trial("c", {}, [0.2, 0.3], start=102, epoch_s=2)
    mean, most, own = report.observed_concurrency([a, b, c])
    assert most == 2 and own == 12.0 and mean == 12.0 / 202


def test_two_slots_never_read_as_three_when_time_this_iter_s_counts_the_checkpoint_upload():
    """Two workers, each running trials one after another. Ray's time_this_iter_s of an epoch runs from Tune's call
    for it to the result, after the checkpoint's upload: a slow upload (here a trial's first, 3 s) makes
    end - time_this_iter_s begin the epoch before the worker's previous trial ended, and the two workers read as 3
    at once (issue #27). Each epoch's own started_at gives the true 2."""
    uploads = [3.0, 0.2, 0.2]

    def worker_trials(names, t):
        trials = []
        for name in names:
            t += 1.0   # the trial's actor starts
            results = []
            for i, upload in enumerate(uploads):
                called, began = t, t + (0.5 if i == 0 else 0.0)   # the first epoch builds the model first
                end = began + 2.0
                results.append({"epoch": i + 1, "started_at": called, "reported_at": end,
                                "time_this_iter_s": end + upload - called})
                t = end + upload + 0.1   # Tune's next call
            trials.append(experiment.Trial(trial_id=name, path=f"/x/trial_{name}", config={}, results=results))
        return trials

    trials = worker_trials("abc", 100.0) + worker_trials("def", 101.3)
    assert report.observed_concurrency(trials)[1] == 2
    for trial in trials:   # an experiment from before started_at: Ray's time_this_iter_s only
        for result in trial.results:
            del result["started_at"]
        spans = report.epoch_spans(trial)
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))   # a trial's epochs never overlap
    assert report.observed_concurrency(trials)[1] > 2   # more than ran: why the worker reports its own started_at


def test_a_worker_stopped_while_python_runs_a_finalizer_says_one_line_not_a_traceback(tmp_path):
    """Ray stops a trial's worker with SIGTERM; its handler raises SystemExit in whatever runs, and inside a
    finalizer Python can only print it, as "Exception ignored ... Traceback ... SystemExit: 1", which reached the
    search's console beside its summary (issue #27). Each worker's set-up hook (tune.ray_setup) makes it one line;
    other exceptions there still print in full."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "worker.py"
    script.write_text("import sys\nfrom tune.ray_setup import worker_setup_hook\n"
                      "if sys.argv[1] == 'hook':\n    worker_setup_hook()()\n"
                      "class Finalizer:\n    def __init__(self, error):\n        self.error = error\n"
                      "    def __del__(self):\n        raise self.error\n"
                      "Finalizer(SystemExit(1))\nFinalizer(ValueError('a real bug'))\n")

    root = str(Path(__file__).resolve().parents[1])   # this checkout's tune, whatever is installed

    def run(mode):
        return subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": root}).stderr

    hooked, plain_ = run("hook"), run("none")
    assert "SystemExit: 1" in plain_   # what the console showed
    lines = hooked.splitlines()
    assert "SystemExit" not in hooked.replace("SystemExit ignored", "")
    assert sum("stopped by Ray while cleaning up" in line for line in lines) == 1, hooked
    assert "ValueError: a real bug" in hooked and "Traceback" in hooked   # a real error is never hidden
