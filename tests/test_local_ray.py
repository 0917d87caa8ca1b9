"""A search without --address runs on a Ray of its own, whatever else runs on the machine; a trial that
cannot import the project says what to do; Ctrl-C while Ray starts is one line.

The "other Ray" is a user's `ray start --head` (tests/ray_cluster.py) with Ray's default temp dir under
this test's own RAY_TMPDIR, so its address file (<RAY_TMPDIR>/ray/ray_current_cluster) is exactly
where a search's `ray.init()` would look for it, and the user's /tmp/ray is never touched.
"""
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import TWO_TRIAL_SPACE
from ray_cluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent

# a node "without this project installed": its Python processes cannot import dogs
NO_DOGS = '''
import sys
class NoDogs:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "dogs":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoDogs())
'''


@pytest.fixture
def cluster():
    """A user's `ray start --head`, token auth off (as the search's own local Ray), default temp dir."""
    c = LocalCluster(auth="disabled")
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


def search(cluster, data, name, *extra, timeout=300):
    """(exit code, output) of `python -m tune.search` in this cluster's environment, as its own process."""
    space = cluster.root / "space.yaml"
    space.write_text(TWO_TRIAL_SPACE)
    cmd = [sys.executable, "-m", "tune.search", "--space", str(space), "--data", str(data),
           "--storage", str(cluster.root / "storage"), "--name", name, *extra]
    out = subprocess.run(cmd, cwd=ROOT, env=cluster.env(), capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout + out.stderr


def node_ids(exp_dir):
    """Node ids of every result row of every trial."""
    return {json.loads(line)["node_id"] for path in Path(exp_dir).glob("trial_*/result.json")
            for line in path.read_text().splitlines() if line.strip()}


@pytest.mark.slow
def test_search_without_address_starts_its_own_ray_beside_a_ray_start_head(cluster, tiny_imagefolder):
    head_id = cluster.add_node("head", head=True, default_temp_dir=True)
    assert (cluster.root / "ray" / "ray_current_cluster").read_text().strip() == cluster.address

    code, out = search(cluster, tiny_imagefolder, "beside")
    assert code == 0, out
    used = node_ids(cluster.root / "storage" / "beside")
    assert used and head_id not in used           # its trials ran on its own Ray, none on the head
    assert "Started a local Ray on 127.0.0.1 for this search only" in out


@pytest.mark.slow
def test_search_without_address_ignores_a_dead_heads_address_file(cluster, tiny_imagefolder):
    cluster.add_node("head", head=True, default_temp_dir=True)
    cluster.kill_node("head")                      # died without `ray stop`: its address file stays
    assert (cluster.root / "ray" / "ray_current_cluster").read_text().strip() == cluster.address

    # Ray's default would retry the dead address for minutes: a hang fails this test by its timeout
    code, out = search(cluster, tiny_imagefolder, "after-dead-head", timeout=240)
    assert code == 0, out
    assert "Search finished" in out and "Started a local Ray on 127.0.0.1" in out


@pytest.mark.slow
def test_node_without_the_project_gets_an_install_hint(cluster, tiny_imagefolder):
    blocker = cluster.root / "no_dogs"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_DOGS)
    cluster.add_node("head", head=True, env={"PYTHONPATH": str(blocker)})

    code, out = search(cluster, tiny_imagefolder, "no-dogs", "--address", cluster.address, "--max-failures", "0")
    table = pd.read_csv(cluster.root / "storage" / "no-dogs" / "trials.csv")
    assert list(table.status) == ["ERROR", "ERROR"], out
    hints = [line for line in out.splitlines() if line.lstrip().startswith("hint")]
    assert hints == [
        "  hint         2 errored trial(s) failed with \"No module named 'dogs'\": this project is missing on a "
        "Ray node; install the project on every Ray node (pip install -e . in its folder, as cluster.yaml's "
        "setup_commands do; docs/cluster.md), then continue with --resume: errored trials run again"], out


# Ray's start-up blocks until SIGINT: the search must be between "Ray starting" and "Ray started"
BLOCKED_START = '''
import sys, time
import ray
def init(*args, **kwargs):
    print("STARTING RAY", flush=True)
    time.sleep(120)
ray.init = init
from tune.search import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.parametrize("resume", [False, True])
def test_ctrl_c_while_ray_starts_exits_130_with_one_line(tiny_imagefolder, tmp_path, resume):
    if resume:      # an experiment to resume: its saved space is all --resume needs
        (tmp_path / "exp").mkdir()
        (tmp_path / "exp" / "search_space.yaml").write_text(TWO_TRIAL_SPACE)
        argv = ["--resume", "--storage", str(tmp_path), "--name", "exp"]
    else:
        (tmp_path / "space.yaml").write_text(TWO_TRIAL_SPACE)
        argv = ["--space", str(tmp_path / "space.yaml"), "--data", str(tiny_imagefolder), "--storage", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_START, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("STARTING RAY"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    again = (f"continue with  python -m tune.search --resume --storage {tmp_path} --name exp" if resume
             else "rerun the same command")
    ours = [line for line in err.splitlines() if line.startswith("dogs-search:")]   # (the data's own warnings aside)
    assert ours == [f"dogs-search: interrupted while starting Ray; nothing ran yet: {again}"], err


def test_errored_trials_get_one_install_hint_per_missing_module(tmp_path):
    from tune.report import failure_hints

    errors = {"a": "ModuleNotFoundError: No module named 'dogs'", "b": "No module named 'dogs.ray_trainable'",
              "c": "ModuleNotFoundError: No module named 'torchvision'", "d": "ValueError: lr"}
    for trial_id, text in errors.items():
        (tmp_path / f"trial_{trial_id}").mkdir()
        (tmp_path / f"trial_{trial_id}" / "error.txt").write_text(f"Failure # 1\nTraceback ...\n{text}\n")
    table = pd.DataFrame({"trial_id": ["a", "b", "c", "d", "e", "f"],     # f: errored, no error.txt
                          "status": ["ERROR", "ERROR", "ERROR", "ERROR", "TERMINATED", "ERROR"]})
    hints = failure_hints(str(tmp_path), table)
    assert [line.split(":")[0] for line in hints] == [
        "  hint         2 errored trial(s) failed with \"No module named 'dogs'\"",
        "  hint         1 errored trial(s) failed with \"No module named 'torchvision'\""]
    assert "this project is missing on a Ray node" in hints[0] and "pip install -e ." in hints[0]
    assert "the Python package 'torchvision' is missing on a Ray node" in hints[1]
    assert failure_hints(str(tmp_path), table[table.trial_id == "d"]) == []


def test_a_trial_that_raised_our_typed_error_gets_its_one_line_in_the_summary(tmp_path):
    """Ray's error.txt is a traceback; the summary prints the ConfigError's line (the trainable's last check)."""
    from tune.report import failure_hints

    why = "unfreeze: 3 is out of range for model 'cnn'; allowed: an integer in 0..0 for cnn"
    tail = ('  File "dogs/config.py", line 211, in resolve\n    raise ConfigError(why)\n'
            f"dogs.errors.ConfigError: {why}\n")
    for trial_id, failures in {"a": 1, "b": 3}.items():   # b: retried twice, each retry failed the same way
        (tmp_path / f"trial_{trial_id}").mkdir()
        text = "".join(f"Failure # {i + 1} (occurred at ...)\nray::ImplicitFunc.train() ...\n{tail}" for i in range(failures))
        (tmp_path / f"trial_{trial_id}" / "error.txt").write_text(text)
    table = pd.DataFrame({"trial_id": ["a", "b"], "status": ["ERROR", "ERROR"]})
    assert failure_hints(str(tmp_path), table) == [f"  error        2 errored trial(s) raised ConfigError: {why}"]


def test_ray_address_in_the_environment_is_joined_saying_so_before_ray_starts(monkeypatch, capsys):
    """RAY_ADDRESS set: the search joins that cluster, and says so (and where it comes from) before Ray's
    connection attempts, which retry an address it cannot reach for minutes with Ray's own lines only."""
    import ray

    from tune.ray_setup import start_ray

    def unreachable(*args, **kwargs):
        raise ConnectionError("no GCS")

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setattr(ray, "init", unreachable)
    with pytest.raises(ConnectionError):
        start_ray(None)
    assert "Joining the Ray cluster at 10.0.0.1:6379 (RAY_ADDRESS in the environment; without it, the search " \
           "starts a Ray of its own on 127.0.0.1)" in capsys.readouterr().out
