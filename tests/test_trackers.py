"""--log mlflow: a tiny search run as a user runs it (its own process, its console as printed); its trials read back
with MLflow's own client and seen in `mlflow ui` through headless Chromium, started with the command the summary
prints; no Tune slow-callback warning on the console (an epoch is one MLflow batch); a tracker that is not
installed or not known is one line before Ray starts."""
import importlib.util
import itertools
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TWO_TRIAL_SPACE, run_main
from ray_cluster import free_port
from tune import search

REPO = Path(__file__).resolve().parents[1]
SEARCH_TIMEOUT_S = 480   # a two-trial search of two epochs: ~20 s idle, minutes on a loaded 2-core machine
UI_START_S = 120         # `mlflow ui` answers in ~10 s idle
PAGE_TRIES = 3           # Chromium loads the page and its runs (over the UI's API), each try at most 120 s
# Tune's warn_if_slow stays silent for 60 s after Ray's import; the search is shorter: start it as if later
SEARCH = ("import sys, ray.tune.utils.util as tune_util; tune_util.START_OF_TIME -= 60; from tune import search; "
          "sys.exit(search.main(sys.argv[1:]))")


def run_bounded(argv, timeout, **kwargs):
    """(exit code, stdout + stderr) of a command in its own process group, the whole group killed after `timeout`
    s (a search's Ray processes too)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"{argv[:3]} did not end within {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


@pytest.fixture(scope="module")
def tracked(tiny_imagefolder, tmp_path_factory):
    """A two-trial search with --log mlflow, run as a user runs it: (experiment folder, its console)."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install -e '.[mlflow]')")
    folder = tmp_path_factory.mktemp("tracked")
    space = folder / "space.yaml"
    space.write_text(TWO_TRIAL_SPACE)
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    code, console = run_bounded([sys.executable, "-c", SEARCH, "--space", str(space), "--data", str(tiny_imagefolder),
                                 "--storage", str(folder / "runs"), "--name", "tracked", "--log", "mlflow"],
                                SEARCH_TIMEOUT_S, env=env, cwd=folder)
    assert code == 0, console[-5000:]
    return folder / "runs" / "tracked", console


def runs_of(exp_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{exp_dir / 'mlflow.db'}")
    return client, client.search_runs([client.get_experiment_by_name("tracked").experiment_id])


def trial_ids(exp_dir):
    return __import__("pandas").read_csv(exp_dir / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")


def test_mlflow_has_one_run_per_trial_with_params_and_epoch_metrics(tracked):
    exp_dir, _ = tracked
    client, runs = runs_of(exp_dir)
    table = trial_ids(exp_dir).reset_index().set_index("trial")
    # each run named as the console and trials.csv name its trial (tune.experiment: #3 ef4ab16e)
    assert sorted(r.info.run_name for r in runs) == sorted(table.index) == sorted(
        f"#{row.number} {row.trial_id}" for row in table.itertuples())
    for run in runs:
        row = table.loc[run.info.run_name]
        assert run.info.status == "FINISHED"
        assert float(run.data.params["lr"]) == pytest.approx(row.lr)
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, row.epochs + 1))
        assert max(history, key=lambda m: m.step).value == pytest.approx(row.val_acc, abs=1e-6)


def test_console_has_no_tracker_warning_and_says_how_to_open_the_runs(tracked):
    exp_dir, console = tracked
    assert "performance bottleneck" not in console, [l for l in console.splitlines() if "bottleneck" in l]
    lines = [line for line in console.splitlines() if line.startswith("  mlflow ")]
    assert lines == [f"  mlflow       runs of experiment tracked: mlflow ui --backend-store-uri "
                     f"sqlite:///{(exp_dir / 'mlflow.db').resolve()}, then open http://127.0.0.1:5000/"
                     f"#/experiments/{runs_of(exp_dir)[1][0].info.experiment_id}/runs"], lines


def test_mlflow_ui_lists_the_trial_runs_in_chromium(tracked, tmp_path):
    """The summary's command, on a free port of 127.0.0.1, serves the page it names; Chromium shows every run."""
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if binary is None:
        pytest.skip("no chromium on this machine (apt-get install -y chromium; .ci/run installs it)")
    exp_dir, console = tracked
    command, page = re.search(r"  mlflow .*?: (mlflow ui .*), then open http://127\.0\.0\.1:5000/(.*)$", console,
                              re.M).groups()
    names = [run.info.run_name for run in runs_of(exp_dir)[1]]
    assert sorted(name for name in names for trial in trial_ids(exp_dir).index if trial in name) == sorted(names)
    port = free_port()
    ui = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), *shlex.split(command)[1:],
                           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                          cwd=tmp_path, start_new_session=True,
                          env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                          stdout=open(tmp_path / "ui.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + UI_START_S
        while True:   # the server's first answer
            try:
                landing = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
                time.sleep(1)
        assert "Unable to display MLflow UI" not in landing   # what mlflow-skinny serves: no UI in the package
        for _ in range(PAGE_TRIES):   # the runs arrive over the UI's API after the page loads
            _, dom = run_bounded([binary, "--headless", "--no-sandbox", "--disable-gpu",
                                  f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=20000",
                                  "--dump-dom", f"http://127.0.0.1:{port}/{page}"], 120)
            if all(name in dom for name in names):
                break
        assert all(name in dom for name in names), (names, re.sub(r"<[^>]+>", " ", dom)[-3000:])
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)


KEYS = ["val_acc", "train_loss", "epoch_time_s", "best_epoch", "should_checkpoint", "done", "node_ip", "date"]
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=False, width=32), st.integers(-10**6, 10**6),
                   st.booleans(), st.text(max_size=5), st.none())


def test_an_epoch_is_one_mlflow_batch_of_the_numbers_rays_callback_logs(tmp_path, monkeypatch):
    """The same results through Ray's MLflowLoggerCallback and ours: the same metrics and steps in MLflow, ours in
    one store write an epoch (Ray's: one a number, the cause of Tune's slow-callback warnings)."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install -e '.[mlflow]')")
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from tune.callbacks import GuardedMLflowCallback

    writes = []
    for method in ("log_metric", "log_batch"):
        original = getattr(SqlAlchemyStore, method)
        monkeypatch.setattr(SqlAlchemyStore, method,
                            lambda self, *a, _call=original, **k: (writes.append(1), _call(self, *a, **k))[1])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    theirs, ours = (kind(tracking_uri=uri, experiment_name=name) for kind, name in
                    [(MLflowLoggerCallback, "theirs"), (GuardedMLflowCallback, "ours")])
    theirs.setup()
    ours.setup()
    made = itertools.count()

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3),
           st.dictionaries(st.sampled_from(["lr", "model"]), VALUES))
    def same_metrics(epochs, config):
        name = f"trial_{next(made)}"
        trial = type("Trial", (), {"config": {"lr": 0.1}, "__str__": lambda self: name})()
        for callback in (theirs, ours):
            callback.log_trial_start(trial)
        logged = {}
        for callback in (theirs, ours):
            writes.clear()
            for step, result in enumerate(epochs, 1):
                callback.log_trial_result(step, trial, {**result, "training_iteration": step, "epoch": step,
                                                        "config": config})
            logged[callback] = len(writes)
            callback.log_trial_end(trial)
        assert logged[ours] == len(epochs) < logged[theirs]
        histories = []
        for experiment in ("theirs", "ours"):
            run, = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                      f"tags.trial_name = '{name}'")
            histories.append({key: [(m.step, "nan" if math.isnan(m.value) else m.value)
                                    for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                    key=lambda m: m.step)]
                              for key in run.data.metrics})
        assert histories[0] == histories[1] and histories[1]

    same_metrics()


def test_unknown_or_missing_tracker_is_one_line_before_ray(tmp_path):
    import ray

    code, _, err = run_main(search, ["--space", "x.yaml", "--log", "mlflow,tensorbored"])
    assert code == 2 and "--log tensorbored: unknown tracker; the known ones are mlflow, wandb" in err
    if importlib.util.find_spec("wandb") is None:
        code, _, err = run_main(search, ["--space", "x.yaml", "--log", "wandb"])
        assert code == 2 and "the wandb package is not installed: pip install 'dogs-tune[wandb]'" in err
    code, _, err = run_main(search, ["--resume", "--storage", str(tmp_path), "--log", "mlflow"])
    assert code == 2 and "a resumed search logs to the trackers it was started with" in err
    assert "Traceback" not in err and not ray.is_initialized()
