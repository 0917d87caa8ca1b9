"""One command per experiment at a time (tune.storage): a second search, resume, extension or --retrain on a folder
another command holds is one line naming it, exit 2; reading commands need no lock; a killed holder's lock is
taken over."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from conftest import TWO_TRIAL_SPACE, run_main
from tune import best, storage, search

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds an experiment folder's lock (as a running command does); yields (folder, process)."""
    procs = []

    def start(folder, command="python -m tune.search --resume --name held"):
        code = ("import sys, time; from tune import storage\n"
                "with storage.held(sys.argv[1], sys.argv[2]):\n"
                "    print('held', flush=True); time.sleep(120)")
        proc = subprocess.Popen([sys.executable, "-c", code, str(folder), command], stdout=subprocess.PIPE, text=True,
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"   # bounded: the process prints it or exits (EOF)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def finished(tiny_imagefolder, tmp_path_factory):
    """A finished 2-trial search (its folder)."""
    folder = tmp_path_factory.mktemp("locked")
    (folder / "two.yaml").write_text(TWO_TRIAL_SPACE)
    code, out, err = run_main(search, ["--space", str(folder / "two.yaml"), "--data", str(tiny_imagefolder),
                                       "--storage", str(folder / "runs"), "--name", "two"])
    assert code == 0, out[-3000:] + err[-3000:]
    return folder / "runs" / "two"


def busy_line(err, proc, command):
    """The second command's one line names the running one: its pid, host, command and since when."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "is in use by" in lines[0], err
    assert f"pid {proc.pid} on {socket.gethostname()} since " in lines[0] and command in lines[0], err
    return lines[0]


def test_a_second_command_on_a_held_experiment_is_one_line_exit_2(finished, holder, tmp_path):
    import ray

    proc = holder(finished)
    storage, name = str(finished.parent), finished.name
    for argv in (["--resume", "--storage", storage, "--name", name],
                 ["--resume", "--storage", storage, "--name", name, "--samples", "3"]):   # an extension
        code, out, err = run_main(search, argv)
        assert code == 2 and busy_line(err, proc, "tune.search --resume --name held").startswith("dogs-search: error:")
        assert "Searching" not in out
    code, _, err = run_main(best, ["--experiment", str(finished), "--retrain"])
    assert code == 2 and busy_line(err, proc, "tune.search --resume --name held").startswith("dogs-best: error:")
    assert not (finished / "best").exists()
    code, _, err = run_main(best, ["--experiment", str(finished), "--retrain", "--top", "2"])
    assert code == 2 and "is in use by" in err and not (finished / "reevaluation").exists()
    assert not ray.is_initialized()
    # reading commands need no lock: the best trial is printed while the other command runs
    code, out, err = run_main(best, ["--experiment", str(finished)])
    assert code == 0 and "Best trial of" in out, err
    # a new search with the name of a folder another new search holds (before its search_space.yaml exists)
    fresh = tmp_path / "runs" / "new"
    proc = holder(fresh, "python -m tune.search --name new")
    code, out, err = run_main(search, ["--space", str(finished.parent.parent / "two.yaml"), "--storage",
                                       str(tmp_path / "runs"), "--name", "new"])
    assert code == 2 and busy_line(err, proc, "tune.search --name new"), out + err


def test_a_killed_holders_lock_is_taken_over(tmp_path, holder, capsys):
    folder = tmp_path / "exp"
    proc = holder(folder, "python -m tune.best --experiment exp --retrain")
    proc.send_signal(signal.SIGKILL)   # no cleanup runs: the owner line stays, the kernel releases the lock
    proc.wait(timeout=30)
    assert json.loads((folder / storage.LOCK_FILE).read_text())["pid"] == proc.pid
    with storage.held(folder, "python -m tune.search --resume"):
        assert json.loads((folder / storage.LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(storage.ExperimentBusy, match=f"pid {os.getpid()} on "):   # held: a second one is refused
            with storage.held(folder, "another"):
                pass
    assert f"last held by pid {proc.pid}" in capsys.readouterr().err
    assert (folder / storage.LOCK_FILE).read_text() == ""   # released cleanly: no owner line for the next one
    with storage.held(folder, "again"):
        pass
    assert "last held by" not in capsys.readouterr().err


def test_a_lock_that_made_its_folder_removes_it_when_nothing_else_was_written(tmp_path):
    with storage.held(tmp_path / "new", "cmd"):
        assert (tmp_path / "new" / storage.LOCK_FILE).is_file()
    assert not (tmp_path / "new").exists()
    with storage.held(tmp_path / "kept", "cmd"):
        (tmp_path / "kept" / "search_space.yaml").write_text("")
    assert (tmp_path / "kept" / "search_space.yaml").is_file()
    with storage.held("s3://bucket/runs/exp", "cmd"):   # a bucket: no lock (documented), nothing made
        pass


@given(st.text("0123456789", min_size=6, max_size=30), st.sampled_from(["postgresql", "mysql", "http", "https"]))
def test_the_owner_line_never_shows_a_password(password, scheme):
    line = storage.command_line("python -m tune.search", ["--optuna-storage", f"{scheme}://user:{password}@db/x",
                                                       "--mlflow-uri", f"{scheme}://u:{password}@host:5000"])
    assert password not in line and line.count("***@") == 2 and "user:" in line and "@db/x" in line
