"""The search end to end on tiny data: ASHA stops trials, Optuna sees them PRUNED, every trial is in
trials.csv and TensorBoard, tune.best submits; an interrupted search resumes without rerunning anything."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata as hparams_metadata

from tune import best, report, search
from tune.report import PLOTS
from tune.study import open_study
from conftest import run_main

EPOCHS = 3
SPACE = """
search:
  samples: {samples}
  epochs: 3
  grace_period: {grace_period}
  reduction_factor: 2
  seed: {seed}
  max_concurrent: {max_concurrent}
params:
  model: cnn
  image_size: 16
  batch_size: 16
  lr: {{loguniform: [1e-6, 3e-2]}}     # wide: some trials learn nothing, so ASHA has something to stop
  head_width: {{choice: [0, 32]}}
"""


def write_space(folder, samples, seed=0, max_concurrent="null", grace_period=1):
    path = Path(folder) / "space.yaml"
    path.write_text(SPACE.format(samples=samples, seed=seed, max_concurrent=max_concurrent, grace_period=grace_period))
    return path


def study_of(exp_dir):
    """{Tune trial id: optuna FrozenTrial} of the experiment's study (its study.db); every study trial has one."""
    with open_study(exp_dir) as study:
        trials = study.trials
    by_id = {t.user_attrs["tune_trial_id"]: t for t in trials}
    assert len(by_id) == len(trials), "a Tune trial is more than one study trial"
    return by_id


def iterations(trial_dir):
    """training_iteration of every line of a trial's result.json."""
    lines = (Path(trial_dir) / "result.json").read_text().splitlines()
    return [json.loads(line)["training_iteration"] for line in lines if line.strip()]


@pytest.fixture(scope="module")
def experiment(tiny_imagefolder, tmp_path_factory):
    """One search of 6 trials x 3 epochs, shared by the tests below."""
    folder = tmp_path_factory.mktemp("search")
    argv = ["--space", str(write_space(folder, samples=6)), "--data", str(tiny_imagefolder),
            "--storage", str(folder / "runs"), "--name", "e2e",
            "--set", f"cache_dir={folder / 'cache'}"]   # its own: the search decodes the images (a progress bar)
    code, out, err = run_main(search, argv)
    assert code == 0, out[-3000:] + err[-3000:]
    exp_dir = folder / "runs" / "e2e"
    return {"dir": exp_dir, "out": out, "err": err, "table": pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str}), "data": tiny_imagefolder}


def test_every_trial_is_in_trials_csv(experiment):
    table = experiment["table"]
    assert len(table) == 6 and table.trial_id.is_unique
    assert set(table.status) == {"TERMINATED"}
    # one name per trial: the Optuna trial number beside the Tune id, as the study has them
    numbers = {trial_id: t.number for trial_id, t in study_of(experiment["dir"]).items()}
    assert list(table.columns[:3]) == ["trial", "number", "trial_id"] and dict(zip(table.trial_id, table.number)) == numbers
    assert list(table.trial) == [f"#{numbers[t]} {t}" for t in table.trial_id]   # the console's name (tune.experiment)
    assert table.lr.between(1e-6, 3e-2).all() and set(table.head_width) <= {0, 32}
    for row in table.itertuples():
        assert iterations(row.path) == list(range(1, row.epochs + 1))


def test_asha_stopped_some_trials_and_optuna_sees_them_pruned(experiment):
    table = experiment["table"]
    stopped = table[table.stopped_early]
    assert 1 <= len(stopped) < len(table), table[["trial_id", "epochs", "val_acc"]]
    assert (stopped.epochs < EPOCHS).all() and (table[~table.stopped_early].epochs == EPOCHS).all()
    study = study_of(experiment["dir"])
    assert set(study) == set(table.trial_id)
    for row in table.itertuples():
        ot_trial = study[row.trial_id]
        if row.stopped_early:
            # told PRUNED, with its score for every epoch it ran as intermediate values
            assert ot_trial.state.name == "PRUNED"
        else:
            # TPE is told the trial's best epoch (best_<metric>): what the winner is chosen by
            assert ot_trial.state.name == "COMPLETE"
            assert ot_trial.value == pytest.approx(row.best_val_acc)
        assert sorted(ot_trial.intermediate_values) == list(range(1, row.epochs + 1))
        assert ot_trial.intermediate_values[row.epochs] == pytest.approx(row.best_val_acc)


def test_optuna_dashboard_reads_the_study_over_http(experiment, tmp_path):
    """optuna-dashboard's own server on 127.0.0.1, against the finished search's study.db, read back through its
    HTTP API with a real client: one study named after the experiment, every trial with its state and scores."""
    import socket
    import urllib.request

    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    assert dashboard.exists(), "optuna-dashboard is not installed (pip install -e '.[test]')"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    study_db = experiment["dir"] / "study.db"
    assert f"optuna-dashboard sqlite:///{study_db}" in experiment["out"]   # the summary says how to open it
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen([str(dashboard), f"sqlite:///{study_db}", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)

    def get(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.time() + 60
        while True:   # the server takes a moment to listen
            try:
                studies = get("/api/studies")["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "dashboard.log").read_text()
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["e2e"]
        detail = get(f"/api/studies/{studies[0]['study_id']}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    table = experiment["table"].set_index("trial_id")
    trials = {t["user_attrs"][0]["value"]: t for t in detail["trials"]}   # its one user attribute: tune_trial_id
    assert sorted(trials) == sorted(table.index)
    for trial_id, t in trials.items():
        row = table.loc[trial_id]
        assert t["state"] == ("Pruned" if row.stopped_early else "Complete")
        assert [v["step"] for v in t["intermediate_values"]] == list(range(1, row.epochs + 1))
        assert t["intermediate_values"][-1]["value"] == pytest.approx(row.best_val_acc)
        assert {p["name"]: float(p["param_external_value"]) for p in t["params"]}["lr"] == pytest.approx(row.lr)


def test_search_plots(experiment):
    """Optuna's plots of the study as PNGs in <experiment>/plots/, listed by the summary."""
    for name in PLOTS:
        png = experiment["dir"] / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
    assert f"plots        {experiment['dir'] / 'plots'}: " + ", ".join(f"{n}.png" for n in PLOTS) in experiment["out"]


def test_history_plot_shows_pruned_trials_at_their_best_epoch():
    """Optuna's history draws complete trials only; ASHA's stops (PRUNED) are added by trial number."""
    import matplotlib
    matplotlib.use("Agg")
    import optuna
    import optuna.visualization.matplotlib as vis

    from tune.report import add_pruned

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for scores, state in (([0.4, 0.5], "COMPLETE"), ([0.2, 0.3, 0.25], "PRUNED"), ([0.6, 0.7], "COMPLETE")):
        trial = study.ask()
        for step, score in enumerate(scores, 1):
            trial.report(score, step)
        study.tell(trial, scores[-1] if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = vis.plot_optimization_history(study)
    assert add_pruned(axes, study) == [(1, 0.3)]
    drawn = [c.get_offsets().tolist() for c in axes.collections]
    assert [[1.0, 0.3]] in drawn and "Pruned" in [t.get_text() for t in axes.get_legend().get_texts()][-1]


RAY_LINES = ("Started a local Ray instance", "Configuration for experiment", "View detailed results here",
             "Wrote the latest version of all result files", "Tuner.restore", "Trial status:",
             "Checkpoint successfully created")


def test_compact_console_progress(experiment):
    """A line per finished trial (its number and id, how it ended, its best score, its searched values) and a
    progress line now and then (epochs done of planned and the time left from the first epoch on, so before any
    trial ended); none of Ray's lines."""
    out, err, table = experiment["out"], experiment["err"], experiment["table"]
    assert "] 6/6 trials: 6 done (" in out and "| best best_val_acc " in out
    assert not [line for line in RAY_LINES if line in out + err]
    # the one-off decode's progress, a whole line forwarded by Ray (dogs.bars.Lines)
    assert re.search(r"decoding (\d+) images at 16px \(once\): \1/\1 img in [\d.]+ s$", out + err, re.M), \
        (out + err)[-3000:]
    lines = out.splitlines()
    trial_lines = [line for line in lines if re.match(r"#\d+ [0-9a-f]+  ", line)]
    numbers = {t.user_attrs["tune_trial_id"]: t.number for t in study_of(experiment["dir"]).values()}
    expected = set()
    for row in table.itertuples():
        ended = f"completed {EPOCHS} epochs" if row.epochs == EPOCHS else f"stopped at epoch {row.epochs}"
        expected.add(f"#{numbers[row.trial_id]} {row.trial_id}  {ended}  best_val_acc {row.best_val_acc:.4f}  "
                     f"lr={row.lr:.4g} head_width={row.head_width}")
    assert set(trial_lines) == expected and len(trial_lines) == len(table)
    # a progress line at the first epoch, before any trial ended: the epochs run of planned and a time left
    # (before it, on a slow start, the periodic line says 0 epochs, with no time left yet)
    first = next(line for line in lines if re.match(r"\[ *\w+\] \d+/6 trials: .* \| epochs [1-9]", line))
    assert lines.index(first) < lines.index(trial_lines[0])
    assert re.search(r"\| epochs [1-9]\d*/18 \|.* \| ~\w+ left$", first), first


def test_summary_reports_counts_overhead_and_where(experiment):
    out = experiment["out"]
    table = experiment["table"]
    n_stopped = int(table.stopped_early.sum())
    assert f"6 run: {6 - n_stopped} complete, {n_stopped} stopped early by ASHA, 0 errored" in out
    assert "driver overhead" in out and "best config" in out
    assert str(experiment["dir"] / "trials.csv") in out


def test_tensorboard_has_every_trial_with_curves_and_hparams(experiment):
    table = experiment["table"]
    for row in table.itertuples():
        events = EventAccumulator(str(experiment["dir"] / "tensorboard" / row.trial))   # the run: the trial's name
        events.Reload()
        scalars = events.Tags()["scalars"]
        assert {"val_acc", "best_val_acc", "train_loss"} <= set(scalars)
        assert not any(tag.startswith("ray/tune") for tag in scalars)   # Ray's own writer is off
        val_acc = events.Scalars("val_acc")
        assert [e.step for e in val_acc] == list(range(1, row.epochs + 1))
        assert val_acc[-1].value == pytest.approx(row.val_acc, abs=1e-6)
        assert events.Scalars("stopped_early")[-1].value == float(row.stopped_early)
        content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
        start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
        assert start.hparams["lr"].number_value == pytest.approx(row.lr)
        assert start.hparams["head_width"].string_value == str(row.head_width)   # 32, not 32.000
        end = hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG])
        assert api_pb2.Status.Name(end.status) == "STATUS_SUCCESS"
        # the experiment: choices are discrete values, ranges intervals; the metrics include stopped_early
        exp = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
        infos = {info.name: info for info in exp.hparam_infos}
        assert [v.string_value for v in infos["head_width"].domain_discrete.values] == ["0", "32"]
        assert (infos["lr"].domain_interval.min_value, infos["lr"].domain_interval.max_value) == (1e-6, 3e-2)
        assert [m.name.tag for m in exp.metric_infos][:2] == ["best_val_acc", "stopped_early"]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tensorboard_server(experiment, tmp_path):
    """`tensorboard --logdir <experiment>` on 127.0.0.1; yields its URL once its HParams experiment is loaded."""
    import urllib.request

    port = free_port()
    log = (tmp_path / "tensorboard.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("tensorboard")), "--logdir", str(experiment["dir"]),
                             "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:   # it listens after a moment, and loads the event files in the background
            try:
                if hparams_experiment(url)["metricInfos"]:
                    break
            except (OSError, KeyError, ValueError):
                pass
            assert proc.poll() is None and time.time() < deadline, \
                "tensorboard did not serve the HParams experiment: " + (tmp_path / "tensorboard.log").read_text()
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def hparams_experiment(url):
    """What the HParams dashboard asks first: the experiment (hparams and metrics), POSTed as its frontend does."""
    import urllib.request

    request = urllib.request.Request(f"{url}/data/plugin/hparams/experiment", method="POST",
                                     data=json.dumps({"experimentName": "", "hparamsLimit": 1000}).encode(),
                                     headers={"Content-Type": "application/json", "X-TensorBoard-Feature-Flags": "{}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_hparams_show_the_score_first(tensorboard_server):
    """TensorBoard's own server: the score is its first metric, and the dashboard ticks its first 5 metrics
    (tf-hparams-query-pane: displayed = index < 5), so best_val_acc and stopped_early are visible columns."""
    experiment_info = hparams_experiment(tensorboard_server)
    metrics = [m["name"]["tag"] for m in experiment_info["metricInfos"]]
    assert metrics[:2] == ["best_val_acc", "stopped_early"] and "best_val_acc" in metrics[:5]
    hparams = {h["name"]: h for h in experiment_info["hparamInfos"]}
    assert hparams["head_width"]["domainDiscrete"] == ["0", "32"]   # its own text: not 32.000
    assert "domainInterval" in hparams["lr"]


def test_tensorboard_hparams_screenshot(tensorboard_server, tmp_path):
    """The HParams tab in headless Chromium, saved to the test's tmp dir (look at it: the score column is there)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("chromium is not installed: the HParams screenshot needs a headless browser")
    png = tmp_path / "hparams.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
                    "--window-size=1600,1000", "--virtual-time-budget=15000", f"{tensorboard_server}/#hparams"],
                   check=True, capture_output=True, timeout=120)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    print(png)


def test_best_prints_and_submits(experiment, tmp_path):
    plots = experiment["dir"] / "plots"
    for png in plots.glob("*.png"):
        png.unlink()
    code, out, err = run_main(best, ["--experiment", str(experiment["dir"]), "--submit", "--out", str(tmp_path),
                                     "--plots"])
    assert code == 0, err
    assert sorted(p.name for p in plots.glob("*.png")) == sorted(f"{name}.png" for name in PLOTS)   # written again
    table = experiment["table"]
    tops = table[table.best_val_acc == table.best_val_acc.max()]   # ties: any of them is the best
    assert any(t in out for t in tops.trial_id) and f"{tops.best_val_acc.iloc[0]:.4f}" in out
    submission = pd.read_csv(tmp_path / "submission.csv")
    test_files = sorted(p.name for p in (experiment["data"] / "Test").iterdir())
    assert list(submission.columns) == ["Id", "Class"]
    assert sorted(submission.Id) == test_files
    assert set(submission.Class) <= {0, 1, 2}   # class indices (sorted class folder names)
    assert (tmp_path / "predictions.png").stat().st_size > 0
    # the experiment by its name in --storage, as tune.search --name gave it
    code, named, err = run_main(best, ["--experiment", "e2e", "--storage", str(experiment["dir"].parent)])
    assert code == 0 and str(experiment["dir"]) in named, err


def test_each_trial_keeps_its_best_and_its_last_checkpoint(experiment):
    # Ray keeps every epoch's checkpoint (num_to_keep would save the experiment state after each one);
    # tune.callbacks deletes the others: what tune.best predicts from stays
    ran_all = 0
    for row in experiment["table"].itertuples():
        rows = [json.loads(line) for line in Path(row.path, "result.json").read_text().splitlines() if line.strip()]
        best = max(reversed(rows), key=lambda r: r["val_acc"])    # the later of equal epochs
        kept = sorted(p.name for p in Path(row.path).glob("checkpoint_*"))
        assert kept == sorted({best["checkpoint_dir_name"], rows[-1]["checkpoint_dir_name"]}), row.trial_id
        assert Path(row.checkpoint).name == best["checkpoint_dir_name"] and row.best_epoch == best["epoch"]
        ran_all += len(rows) == EPOCHS
    assert ran_all   # a trial of 3 epochs had 3 checkpoints to keep 2 of


@pytest.mark.timeout(1200)   # waits up to 480 s for the moment to interrupt, then the resume
@pytest.mark.parametrize("stop, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_resume_after_ctrl_c_or_sigterm_reruns_nothing(tiny_imagefolder, tmp_path, stop, status):
    """Ctrl-C, and SIGTERM as Slurm, Kubernetes or `kill` send it, stop the search cleanly: "Search interrupted",
    our one resume command (not Ray's Tuner.restore hint), the shell's status of the signal; --resume continues."""
    samples = 5
    # one trial at a time, no early stopping: a trial has finished exactly when it reached epoch 3
    space = write_space(tmp_path, samples=samples, seed=1, max_concurrent=1, grace_period=EPOCHS)
    storage, name = tmp_path / "runs", "resume"
    exp_dir = storage / name
    # 64 px: epochs long enough that Ctrl-C lands while the second trial runs (cached trials start at once)
    cmd = [sys.executable, "-m", "tune.search", "--space", str(space), "--data", str(tiny_imagefolder),
           "--storage", str(storage), "--name", name, "--set", "image_size=64"]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_AUTH_MODE": "disabled"})

    # interrupt (Ctrl-C) once one trial has finished and the next one has reported an epoch: read in the live
    # study (the trials' files reach the experiment folder only when Ray saves its state, every 10 s or more)
    deadline, reached, states = time.time() + 480, False, []   # generous: a loaded 2-core machine took 150 s to the first trial's end
    while not reached and time.time() < deadline and proc.poll() is None:
        try:
            with open_study(exp_dir) as study:
                states = [(t.state.name, len(t.intermediate_values)) for t in study.trials]
        except Exception:   # no study.db yet
            states = []
        reached = ("COMPLETE", EPOCHS) in states and any(s == "RUNNING" and 1 <= n < EPOCHS for s, n in states)
        time.sleep(0 if reached else 0.2)
    proc.send_signal(stop)
    assert reached, f"the search never had a finished trial and a running one ({states}): " + \
        (tmp_path / "first.log").read_text()[-3000:]
    assert proc.wait(timeout=120) == status, (tmp_path / "first.log").read_text()[-3000:]
    console = (tmp_path / "first.log").read_text()   # a real console: the workers' lines reach it too
    assert "Checkpoint successfully created" not in console and "Trial status:" not in console
    assert f"Search interrupted: {exp_dir}" in console and "Search finished" not in console, console[-3000:]
    # the times up to the last epoch; the wait for the running trial to stop said apart
    assert re.search(r"wall time +[\d.]+ s to the last epoch; .* s stopping", console), console[-3000:]
    resume_lines = [line for line in console.splitlines() if "--resume" in line or "restore" in line.lower()]
    assert resume_lines == [f"Interrupted: continue with  python -m tune.search --resume --storage {storage} "
                            f"--name {name}"], console[-3000:]
    assert not [line for line in RAY_LINES + ("SIGTERM received",) if line in console], console[-3000:]
    before = {p.name: (p / "result.json").read_text() for p in exp_dir.glob("trial_*")
              if (p / "result.json").exists() and (p / "result.json").read_text().strip()}
    # finished = reached its last epoch before the trial after it started (one at a time: Tune had recorded it
    # TERMINATED). The trial that ran last may have logged its last epoch while Ctrl-C stopped Tune before that
    # epoch's checkpoint was recorded: its last epoch was in flight, and may run again below, as any in flight.
    last_running = max(before, key=lambda n: json.loads(before[n].splitlines()[0])["reported_at"])   # started last
    finished = {n for n, text in before.items()
                if json.loads(text.splitlines()[-1])["training_iteration"] == EPOCHS and n != last_running}
    assert 1 <= len(finished) < samples, before.keys()

    # resume: finished trials untouched, interrupted ones continue from their checkpoint, none twice
    code, out, err = run_main(search, ["--resume", "--storage", str(storage), "--name", name])
    assert code == 0, out[-3000:] + err[-3000:]
    table = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    assert len(table) == samples and set(table.status) == {"TERMINATED"}
    for trial_name, text in before.items():
        after = (exp_dir / trial_name / "result.json").read_text()
        if trial_name in finished:
            assert after == text, f"{trial_name} ran again"
        else:
            assert after.startswith(text), f"{trial_name} restarted instead of continuing"
    for row in table.itertuples():
        # every epoch ran; at most the one epoch in flight at Ctrl-C ran twice (Ray's saved state can lag
        # the last result by that epoch; with the per-epoch seed its second run is the same computation)
        its = iterations(row.path)
        assert sorted(set(its)) == list(range(1, row.epochs + 1)), row.trial_id
        assert len(its) - len(set(its)) <= (0 if row.trial_id in {n[len("trial_"):] for n in finished} else 1)
    # the study came back from study.db: one study trial per trial, none suggested twice, none left RUNNING
    study = study_of(exp_dir)
    assert set(study) == set(table.trial_id) and {t.state.name for t in study.values()} == {"COMPLETE"}


def test_gpu_request_on_a_gpu_less_machine_fails_fast(tiny_imagefolder, tmp_path):
    import ray
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    start = time.time()
    code, out, err = run_main(search, ["--space", str(write_space(tmp_path, samples=2)), "--data",
                                       str(tiny_imagefolder), "--storage", str(tmp_path), "--gpus-per-trial", "1"])
    assert code == 2
    assert "--gpus-per-trial 1 asks for a GPU" in err and "PENDING forever" in err and "GPU=0" in err
    # the proof is that Ray never started; the bound only catches a wait (generous: a loaded 2-core machine)
    assert time.time() - start < 120 and not ray.is_initialized()


def test_bad_space_or_data_fails_before_ray(tiny_imagefolder, tmp_path):
    import ray

    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {lr: {loguniform: [0, 1]}}\n")
    code, _, err = run_main(search, ["--space", str(bad), "--data", str(tiny_imagefolder), "--storage", str(tmp_path)])
    assert code == 2 and str(bad) in err and "params.lr.loguniform" in err
    code, _, err = run_main(search, ["--space", "cnn_scratch", "--data", str(tmp_path / "nowhere")])
    assert code == 2 and "--data" in err and "nowhere" in err
    # values that cannot run together: fixed by --set, or reachable by sampling
    code, _, err = run_main(search, ["--space", "cnn_scratch", "--data", str(tiny_imagefolder), "--set", "unfreeze=2"])
    assert code == 2 and err.count("\n") == 1 and "the fixed values model='cnn' (fixed), unfreeze=2 (--set)" in err
    bad.write_text("params: {model: {choice: [resnet18, cnn]}, unfreeze: {int: [0, 4]}}\n")
    code, _, err = run_main(search, ["--space", str(bad), "--data", str(tiny_imagefolder), "--storage", str(tmp_path)])
    assert code == 2 and f"{bad}: params: a trial can draw model='cnn' (sampled), unfreeze=4 (sampled)" in err
    assert not ray.is_initialized()


def swapped_validation(root):
    """Validation's class folders rotated: the better a model learns Train, the worse its val_loss gets, so
    val_loss is lowest at an early epoch and the last epoch is not the best."""
    for a, b in (("circle", "tmp"), ("square", "circle"), ("triangle", "square"), ("tmp", "triangle")):
        (root / "Validation" / a).rename(root / "Validation" / b)
    return root


def test_one_best_val_loss_min_summary_best_kept_checkpoint_train_and_retrain_agree(tmp_path):
    from conftest import make_imagefolder
    import torch
    from dogs import checkpoint, train

    data = swapped_validation(make_imagefolder(tmp_path / "data", n_train=16, n_val=6, awkward=False))
    space = tmp_path / "space.yaml"
    space.write_text("""
search: {samples: 2, epochs: 3, grace_period: 1, seed: 0, metric: val_loss, mode: min, sampler: random, scheduler: fifo}
params: {model: cnn, image_size: 16, batch_size: 16, head_width: 32, lr: {loguniform: [3e-3, 1e-2]}}
""")
    studies = f"sqlite:///{tmp_path / 'studies.db'}"   # --optuna-storage: the study in another database
    code, out, err = run_main(search, ["--space", str(space), "--data", str(data), "--storage", str(tmp_path / "runs"),
                                       "--name", "loss", "--optuna-storage", studies])
    assert code == 0, out[-3000:] + err[-3000:]
    exp_dir = tmp_path / "runs" / "loss"
    assert f"optuna-dashboard {studies} (study loss)" in out and not (exp_dir / "study.db").exists()
    table = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    results = {row.trial_id: [json.loads(line) for line in Path(row.path, "result.json").read_text().splitlines()]
               for row in table.itertuples()}
    assert (table.epochs == 3).all() and not table.stopped_early.any()   # FIFO: no early stops, whatever grace_period
    best_epochs = {t: min(reversed(rs), key=lambda r: r["val_loss"])["epoch"] for t, rs in results.items()}
    best_losses = {t: min(r["val_loss"] for r in rs) for t, rs in results.items()}
    winner = min(best_losses, key=best_losses.get)
    assert best_epochs[winner] != 3   # the case: the last epoch is not the best one

    # 1. every trial keeps its best epoch's checkpoint and its last one, no other (tune.callbacks), and
    # trials.csv reports best_val_loss at that epoch
    for row in table.itertuples():
        assert checkpoint.read(row.checkpoint)["epoch"] == best_epochs[row.trial_id] == row.best_epoch
        by_epoch = {r["epoch"]: r["checkpoint_dir_name"] for r in results[row.trial_id]}
        assert sorted(p.name for p in Path(row.path).glob("checkpoint_*")) == sorted({by_epoch[row.best_epoch],
                                                                                     by_epoch[3]})
        assert row.best_val_loss == pytest.approx(best_losses[row.trial_id])
    # 2. the summary's best trial is the one with the lowest val_loss at any epoch
    assert re.search(rf"best trial   #\d+ {winner}: best_val_loss={best_losses[winner]:.4f} at epoch "
                     rf"{best_epochs[winner]} ", out), out[-3000:]
    # 3. TPE was told each trial's best_val_loss
    study = study_of(exp_dir)
    assert set(study) == set(best_losses)
    for trial_id, ot_trial in study.items():
        assert ot_trial.value == pytest.approx(best_losses[trial_id])
    # 4. tune.best picks the same trial and epoch, and predicts from that checkpoint
    code, out, err = run_main(best, ["--experiment", str(exp_dir)])
    assert code == 0, err
    assert re.search(rf"Best trial of {re.escape(str(exp_dir))}: #\d+ {winner}\n", out), out
    assert f"best_val_loss {best_losses[winner]:.4f} at epoch {best_epochs[winner]}" in out
    # 5. tune.best --retrain's best.pt (dogs.train.run) is the best epoch by the same metric and mode
    code, out, err = run_main(best, ["--experiment", str(exp_dir), "--submit", "--retrain", "--out",
                                     str(tmp_path / "retrain")])
    assert code == 0, err
    history = pd.read_csv(tmp_path / "retrain" / "history.csv")
    best_row = history.iloc[::-1].val_loss.idxmin()   # the later of equal epochs
    assert checkpoint.read(tmp_path / "retrain" / "best.pt")["epoch"] == history.epoch[best_row] != 3
    # and dogs.train by itself, with the same metric and mode
    config = {**checkpoint.read(tmp_path / "retrain" / "best.pt")["config"], "epochs": 3}
    result = train.run(config, tmp_path / "train", log=lambda m: None, device=torch.device("cpu"))
    assert result["best_epoch"] == min(reversed(result["history"]), key=lambda m: m["val_loss"])["epoch"] != 3
    assert checkpoint.read(tmp_path / "train" / "best.pt")["epoch"] == result["best_epoch"]


def test_time_budget_stops_cleanly_and_resume_loses_nothing(tiny_imagefolder, tmp_path):
    """--time-budget stops the search as Ctrl-C does, whatever had run by then: exit 0, the summary and the
    --resume command; no trial is marked finished that did not run all its epochs, and --resume (this session
    without a budget) finishes every trial, one study trial each."""
    samples = 3
    space = write_space(tmp_path, samples=samples, seed=2, max_concurrent=1, grace_period=EPOCHS)
    storage, name = tmp_path / "runs", "budget"
    exp_dir = storage / name
    code, out, err = run_main(search, ["--space", str(space), "--data", str(tiny_imagefolder), "--storage", str(storage),
                                       "--name", name, "--time-budget", "1s"])
    assert code == 0, out[-3000:] + err[-3000:]
    assert f"Time budget 1s used up: continue with  python -m tune.search --resume --storage {storage} --name {name}" in out
    assert "Search stopped (Time budget 1s used up)" in out and "optuna study" in out
    first = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    before = {row.trial_id: iterations(row.path) for row in first.itertuples()}
    assert (first.status != "TERMINATED").any() or len(first) < samples
    assert ((first.status != "TERMINATED") | (first.epochs == EPOCHS)).all()   # not cut short and called done
    assert report.study_states(exp_dir).get("PRUNED", 0) == 0

    # resumed where it was copied to (another machine, another --storage): the copy's own study.db continues,
    # the original's is untouched (Ray's tuner.pkl names the folder it was searched in)
    original = {trial_id: t.state.name for trial_id, t in study_of(exp_dir).items()}
    storage = tmp_path / "copied"
    exp_dir = shutil.copytree(exp_dir, storage / name)
    code, out, err = run_main(search, ["--resume", "--storage", str(storage), "--name", name, "--time-budget", "none"])
    assert code == 0, out[-3000:] + err[-3000:]
    assert {trial_id: t.state.name for trial_id, t in study_of(tmp_path / "runs" / name).items()} == original
    table = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    assert len(table) == samples and set(table.status) == {"TERMINATED"} and (table.epochs == EPOCHS).all()
    for row in table.itertuples():
        its = iterations(row.path)
        assert sorted(set(its)) == list(range(1, EPOCHS + 1)) and its[:len(before.get(row.trial_id, []))] == \
            before.get(row.trial_id, [])
    study = study_of(exp_dir)
    assert set(study) == set(table.trial_id) and {t.state.name for t in study.values()} == {"COMPLETE"}


def test_time_fidelity_gives_asha_seconds_of_training(tiny_imagefolder, tmp_path, monkeypatch):
    """--fidelity time: ASHA ranks trials by time_total_s at rungs in seconds (from the budget), and the search
    runs to the end with it."""
    from tune import ray_tuner

    made = []

    class Recorded(ray_tuner.ASHAScheduler):
        def __init__(self, **kwargs):
            made.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(ray_tuner, "ASHAScheduler", Recorded)
    space = write_space(tmp_path, samples=3, max_concurrent=1)
    code, out, err = run_main(search, ["--space", str(space), "--data", str(tiny_imagefolder), "--storage",
                                       str(tmp_path / "runs"), "--name", "t", "--fidelity", "time", "--time-budget", "9m"])
    assert code == 0, out[-3000:] + err[-3000:]
    # 540 s x 1 slot over 3 trials x 3 epochs: a nominal epoch of 60 s, grace_period 1 of them
    assert made == [{"time_attr": "time_total_s", "max_t": 540, "grace_period": 60.0, "reduction_factor": 2}]
    assert "ASHA's rungs at 60, 120, 240, 480 s of each trial's training (search.fidelity: time)" in out
    table = pd.read_csv(tmp_path / "runs" / "t" / "trials.csv")
    assert len(table) == 3 and set(table.status) == {"TERMINATED"} and (table.epochs == EPOCHS).all()
    code, _, err = run_main(search, ["--space", str(space), "--data", str(tiny_imagefolder), "--fidelity", "time"])
    assert code == 2 and "search.fidelity: time places ASHA's rungs in seconds" in err and "no time_budget" in err


def test_hparams_booleans_and_choices_are_discrete_values():
    from tensorboard.plugins.hparams import summary_v2 as hp

    from tune.callbacks import hparam, hparam_value

    def info(param):   # the HParamInfo TensorBoard reads back
        content = hp.hparams_config_pb([hparam(param)], []).value[0].metadata.plugin_data.content
        return hparams_metadata.parse_experiment_plugin_data(content).hparam_infos[0]

    augment = info({"name": "augment", "kind": "choice", "args": [False, True]})
    assert api_pb2.DataType.Name(augment.type) == "DATA_TYPE_BOOL"
    assert [v.bool_value for v in augment.domain_discrete.values] == [False, True]
    content = hp.hparams_pb({"augment": hparam_value(True)}).value[0].metadata.plugin_data.content
    start = hparams_metadata.parse_session_start_info_plugin_data(content)
    assert start.hparams["augment"].WhichOneof("kind") == "bool_value"      # shown as true/false, not 1/0
    model = info({"name": "model", "kind": "choice", "args": ["cnn", "resnet18"]})
    assert [v.string_value for v in model.domain_discrete.values] == ["cnn", "resnet18"]
    width = info({"name": "head_width", "kind": "choice", "args": [0, 256, 3e-4]})
    assert {v.string_value for v in width.domain_discrete.values} == {"0", "256", "0.0003"}   # not 256.000
    size = info({"name": "batch_size", "kind": "randint", "args": [8, 65]})
    assert (size.domain_interval.min_value, size.domain_interval.max_value) == (8, 64)


def test_resume_of_an_experiment_with_a_pickled_searcher_is_one_clear_error(tmp_path):
    import pickle
    import ray

    from conftest import TWO_TRIAL_SPACE

    exp_dir = tmp_path / "old"
    exp_dir.mkdir()
    (exp_dir / "search_space.yaml").write_text(TWO_TRIAL_SPACE)
    (exp_dir / "searcher-state-2025-01-01_00-00-00.pkl").write_bytes(pickle.dumps({"_ot_study": None}))
    code, _, err = run_main(search, ["--resume", "--storage", str(tmp_path), "--name", "old"])
    assert code == 2 and "searched by an older dogs-search" in err and "Traceback" not in err
    assert not ray.is_initialized()
    from tune.report import write_plots
    from tune.study import PickledSearcherState

    with pytest.raises(PickledSearcherState):   # tune.best --plots reads it as JSON only: a typed error, no code run
        write_plots(exp_dir)


def test_resume_with_another_space_data_or_setting_is_refused_naming_each(experiment, tmp_path):
    """--resume continues the saved space: flags that say otherwise would be silently ignored; the same
    command again with --resume is fine (tests/test_multinode.py resumes so)."""
    import ray

    from conftest import make_imagefolder

    storage, name = str(experiment["dir"].parent), experiment["dir"].name
    other = make_imagefolder(tmp_path / "other", n_train=2, n_val=2, n_test=0, awkward=False)
    wider = tmp_path / "wider.yaml"
    wider.write_text(SPACE.format(samples=6, seed=0, max_concurrent="null", grace_period=1).replace("3e-2]", "1e-1]"))
    for flags, says in ((["--data", str(other)], f"data (saved: '{experiment['data']}', now: '{other}')"),
                        (["--space", str(wider), "--data", str(experiment["data"])], "params.lr (saved: {loguniform: "),
                        (["--set", "lr=0.1"], "params.lr (saved: {loguniform: "),
                        (["--grace-period", "2"], "search.grace_period (saved: 1, now: 2)"),
                        (["--samples", "3"], "extends it (more than 6)")):
        code, _, err = run_main(search, ["--resume", "--storage", storage, "--name", name, *flags])
        assert code == 2 and says in err and "start a new search with another --name" in err, (flags, err)
        assert err.count("\n") == 1
    assert not ray.is_initialized()


def test_every_trial_errored_exits_nonzero_saying_there_is_no_best(tiny_imagefolder, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    code, out, err = run_main(search, ["--space", str(write_space(tmp_path, samples=2)), "--data",
                                       str(tiny_imagefolder), "--storage", str(tmp_path / "runs"), "--max-failures",
                                       "0", "--set", f"cache_dir={blocked}/cache"])
    assert code == 1, out[-3000:] + err[-3000:]
    # a CacheError before the first epoch: each trial fails once, in one line, and the search says so (issue #24)
    assert "2 errored" in out and "2 trial(s) ran, each failed before its first epoch (not retried; CacheError" in err
    assert "Study instance does not contain trials" not in out + err   # no intermediate-values plot of nothing


def test_progress_line_breaks_ties_as_the_summary_and_skips_diverged_trials():
    from types import SimpleNamespace

    from tune.progress import ProgressCallback

    def trial(trial_id, score):
        return SimpleNamespace(trial_id=trial_id, status="RUNNING",
                               last_result={"training_iteration": 1, "best_val_loss": score})

    progress = ProgressCallback(4, 3, "val_loss", "min")
    line = progress.line([trial("b", 0.5), trial("c", float("nan")), trial("a", 0.5)], elapsed=1)
    assert "best best_val_loss 0.5000 (a)" in line   # of equal scores the first by id, as tune.experiment.best_trial
    assert "(c)" not in progress.line([trial("c", float("nan"))], elapsed=1)


def test_resume_with_more_samples_extends_a_finished_search_on_its_study(tiny_imagefolder, tmp_path):
    """--resume --samples N runs the trials still missing on the same Optuna study (the sampler learns from all);
    no finished trial runs again; fewer samples and another --epochs are refused, one line each."""
    space = write_space(tmp_path, samples=3, seed=3, max_concurrent=1, grace_period=EPOCHS)
    storage, name = tmp_path / "runs", "extend"
    exp_dir = storage / name
    code, out, err = run_main(search, ["--space", str(space), "--data", str(tiny_imagefolder), "--storage",
                                       str(storage), "--name", name])
    assert code == 0, out[-3000:] + err[-3000:]
    before = {p.name: (p / "result.json").read_text() for p in exp_dir.glob("trial_*")}
    assert len(before) == 3

    resume = ["--resume", "--storage", str(storage), "--name", name]
    code, out, err = run_main(search, resume + ["--samples", "2"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "extends it (more than 3)" in err, err
    code, out, err = run_main(search, resume + ["--samples", "5", "--epochs", "5"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "ASHA's rungs" in err and "search.epochs" in err, err

    code, out, err = run_main(search, resume + ["--samples", "5"])
    assert code == 0, out[-3000:] + err[-3000:]
    assert "Extending the search by 2 trial(s) on its study (5 in all)" in out and "Search finished" in out
    table = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    assert len(table) == 5 and set(table.status) == {"TERMINATED"} and sorted(table.number) == list(range(5))
    folders = sorted(exp_dir.glob("trial_*"))
    assert len(folders) == 5
    for trial_name, text in before.items():
        assert (exp_dir / trial_name / "result.json").read_text() == text, f"{trial_name} ran again"
    for folder in folders:   # each trial started once: one first epoch in its results
        assert iterations(folder).count(1) == 1, folder.name
    study = study_of(exp_dir)
    assert set(study) == set(table.trial_id) and sorted(t.number for t in study.values()) == list(range(5))
    assert {t.state.name for t in study.values()} == {"COMPLETE"}
    assert yaml.safe_load((exp_dir / "search_space.yaml").read_text())["search"]["samples"] == 5
