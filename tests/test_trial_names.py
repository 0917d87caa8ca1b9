"""One trial name everywhere (tune.experiment): the console's `#N id` is trials.csv's `trial`, the summary's, tune.best's,
Tune's trial name (MLflow's run), TensorBoard's run and the plots'; an experiment made before these names (Tune's
trial names trial_<id>, TensorBoard files in the trial folders) resumes and hands over, its new trials named."""
import re

import matplotlib
import pandas as pd
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from tune import best, experiment, report, search, callbacks, ray_tuner
from tune.study import open_study
from conftest import run_main

SPACE = """
search: {samples: 2, epochs: 2, grace_period: 2, seed: 0, max_concurrent: 1}
params:
  model: cnn
  image_size: 16
  batch_size: 16
  lr: {loguniform: [1e-3, 1e-2]}
"""


def test_the_rule():
    assert experiment.trial_name("ef4ab16e", 3) == "#3 ef4ab16e" and experiment.trial_name("ef4ab16e") == "ef4ab16e"
    assert experiment.trial_name(None, 3) == "#3" and experiment.run_name(1, 2) == "rank1-seed2"


def test_an_old_experiment_resumes_and_hands_over_and_every_place_names_a_trial_alike(tiny_imagefolder, tmp_path,
                                                                                        monkeypatch):
    (tmp_path / "space.yaml").write_text(SPACE)
    storage, name = tmp_path / "runs", "named"
    exp_dir = storage / name
    # written the old way: Tune's trial names are the folders' (trial_<id>), TensorBoard writes into those folders
    with monkeypatch.context() as old:
        old.setattr(experiment, "named", ray_tuner.trial_dirname)
        old.setattr(callbacks, "run_folder", lambda folder, name: str(folder))
        code, out, err = run_main(search, ["--space", str(tmp_path / "space.yaml"), "--data", str(tiny_imagefolder),
                                           "--storage", str(storage), "--name", name])
    assert code == 0, out[-3000:] + err[-3000:]
    old_ids = sorted(p.name.removeprefix("trial_") for p in exp_dir.glob("trial_*"))
    assert len(old_ids) == 2 and not (exp_dir / callbacks.FOLDER).exists()

    # resumed with one more trial, by today's code
    code, out, err = run_main(search, ["--resume", "--storage", str(storage), "--name", name, "--samples", "3"])
    assert code == 0, out[-3000:] + err[-3000:]
    table = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    with open_study(exp_dir) as study:
        numbers = {t.user_attrs["tune_trial_id"]: t.number for t in study.trials}
    assert len(table) == 3 and set(table.status) == {"TERMINATED"}
    # trials.csv: the name first, the number and id kept
    assert list(table.columns[:3]) == ["trial", "number", "trial_id"]
    assert list(table.trial) == [f"#{numbers[t]} {t}" for t in table.trial_id]
    [new_id] = set(table.trial_id) - set(old_ids)
    new_name = f"#{numbers[new_id]} {new_id}"
    # the console: the new trial's line and the summary's best trial by the same name
    assert re.search(rf"^{re.escape(new_name)}  completed 2 epochs", out, re.MULTILINE), out[-3000:]
    best_row = table.loc[table.best_val_acc.idxmax()]   # no ties on this data at 4 places: checked below
    assert f"  best trial   {best_row.trial}: best_val_acc=" in out
    assert "Warning" not in out   # the model learnt: no false alarm (dogs.baseline)

    # TensorBoard: the old trials' curves stay whole in their folders; the new one is a run named as everywhere
    for trial_id in old_ids:
        assert list((exp_dir / f"trial_{trial_id}").glob("events.out.tfevents.*"))
    runs = sorted(p.name for p in (exp_dir / callbacks.FOLDER).iterdir())
    assert runs == [new_name]
    events = EventAccumulator(str(exp_dir / callbacks.FOLDER / new_name))
    events.Reload()
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2]
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.group_name == new_name

    # the plots: the best trial's point carries its name
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open_study(exp_dir) as study:
        number, _, label = report.name_best(plt.subplots()[1], study)
    plt.close("all")
    assert label in set(table.trial) and (exp_dir / "plots" / "optimization_history.png").is_file()

    # tune.best of the resumed experiment: the same name, and its hand-over
    code, out, err = run_main(best, ["--experiment", str(exp_dir), "--submit", "--out", str(tmp_path / "best")])
    assert code == 0, out[-3000:] + err[-3000:]
    assert f"Best trial of {exp_dir}: {label}" in out and label == best_row.trial
    assert (tmp_path / "best" / "submission.csv").is_file()
    assert (tmp_path / "best" / "config.yaml").read_text().startswith(f"# the config of trial {label} of {exp_dir}")
