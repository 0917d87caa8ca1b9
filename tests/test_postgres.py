"""The study on a real PostgreSQL server (--optuna-storage postgresql://..., psycopg 3 as documented), as on a cluster: a search runs
against it; the database stops mid-search: the search says so in one line and stops; --resume, once the
database is back, finishes it with no trial lost or duplicated in the study.

The server is Debian's `postgresql` package (.ci/run installs it), run from its own data folder in tmp on
127.0.0.1 and a free port; the test is skipped, saying why, only where PostgreSQL (or psycopg2, or runuser under
root) is not installed: a server that is installed but fails to set up, start, stop or restart is a failure."""
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tune import search
from conftest import run_main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]   # deadlines of 480 + 240 + 300 s, then a resume
EPOCHS, SAMPLES = 3, 4


def postgres_bin(name):
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]), None)
    if found is None:
        pytest.skip(f"PostgreSQL's {name} is not installed (Debian: apt-get install -y postgresql)")
    return found


class Server:
    """A PostgreSQL server of its own: data folder, 127.0.0.1, a free port; as the user `postgres` under root
    (initdb refuses root)."""

    def __init__(self, folder):
        self.folder, self.data = Path(folder), Path(folder) / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        self.run(postgres_bin("initdb"), "-D", str(self.data), "--auth=trust", "-U", "dogs", "-E", "UTF8")
        self.url = f"postgresql://dogs@127.0.0.1:{self.port}/postgres"

    def run(self, *command):
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True, timeout=120)
        if done.returncode:   # installed but failing (initdb, or pg_ctl's start or the restart mid-test): a failure
            pytest.fail(f"PostgreSQL: {' '.join(command[:1])} failed: {(done.stderr or done.stdout)[-500:]}")

    def start(self):
        self.run(postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                 "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}", "start")

    def stop(self):
        subprocess.run([*self.as_user, postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)


@pytest.fixture
def server():
    pytest.importorskip("psycopg2", reason="psycopg2-binary is in the test extra: pip install -e '.[test]'")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb refuses root")
    folder = tempfile.mkdtemp(prefix="dogs-postgres-")   # not under pytest's tmp: the user postgres must enter it
    os.chmod(folder, 0o755)
    server = Server(folder)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def study_trials(url, name):
    return optuna.load_study(study_name=name, storage=url).trials


def test_search_on_postgres_stops_in_one_line_when_the_database_stops_and_resume_finishes_it(
        server, tiny_imagefolder, tmp_path):
    (tmp_path / "space.yaml").write_text(
        f"search: {{samples: {SAMPLES}, epochs: {EPOCHS}, scheduler: fifo, max_concurrent: 1, seed: 0}}\n"
        "params:\n  model: cnn\n  image_size: 32\n  batch_size: 16\n  lr: {loguniform: [1e-3, 1e-2]}\n")
    storage, name = tmp_path / "runs", "pg"
    cmd = [sys.executable, "-m", "tune.search", "--space", str(tmp_path / "space.yaml"), "--data",
           str(tiny_imagefolder), "--storage", str(storage), "--name", name, "--optuna-storage", server.url]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_AUTH_MODE": "disabled"})

    # stop the database once a trial has finished and the next one has reported an epoch (read in the study)
    deadline, reached, states = time.time() + 480, False, []
    while not reached and time.time() < deadline and proc.poll() is None:
        try:
            states = [(t.state.name, len(t.intermediate_values)) for t in study_trials(server.url, name)]
        except Exception:   # no study yet
            states = []
        reached = ("COMPLETE", EPOCHS) in states and any(s == "RUNNING" and n >= 1 for s, n in states)
        time.sleep(0 if reached else 0.5)
    server.stop()
    assert reached, f"the search never had a finished trial and a running one ({states}): " + \
        (tmp_path / "first.log").read_text()[-3000:]
    code = proc.wait(timeout=240)
    console = (tmp_path / "first.log").read_text()
    assert code == 1, console[-3000:]
    errors = [line for line in console.splitlines() if line.startswith("dogs-search: error:")]
    assert len(errors) == 1 and "cannot be reached" in errors[0] and "--resume" in errors[0], console[-3000:]
    assert "Traceback" not in console, console[-3000:]

    # --resume while the database is still down: one line, nothing run
    down = subprocess.run([sys.executable, "-m", "tune.search", "--resume", "--storage", str(storage), "--name", name],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    out, err = down.stdout, down.stderr
    assert down.returncode in (1, 2) and "Traceback" not in out + err, out[-3000:] + err[-3000:]
    assert err.count("dogs-search: error:") == 1 and "cannot" in err and "127.0.0.1" in err, err[-3000:]

    # the database back: --resume finishes the search; every study trial is one Tune trial, none twice
    server.start()
    code, out, err = run_main(search, ["--resume", "--storage", str(storage), "--name", name])
    assert code == 0, out[-3000:] + err[-3000:]
    table = pd.read_csv(storage / name / "trials.csv", dtype={"trial_id": str})
    assert len(table) == SAMPLES and set(table.status) == {"TERMINATED"}, table
    trials = study_trials(server.url, name)
    assert [t.state.name for t in trials] == ["COMPLETE"] * SAMPLES, [t.state.name for t in trials]
    assert sorted(t.user_attrs["tune_trial_id"] for t in trials) == sorted(table.trial_id)
    assert all(sorted(t.intermediate_values) == list(range(1, EPOCHS + 1)) for t in trials)
