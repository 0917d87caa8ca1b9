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
