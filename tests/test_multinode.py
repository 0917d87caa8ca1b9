"""A real two-node Ray cluster on this machine: the search spreads over both nodes and survives faults.

Every test runs `python -m tune.search --address ...` as a separate driver process against a head and
a worker node started by `ray start` (tests/ray_cluster.py): both on 127.0.0.1, token auth on, one CPU
each, so two trials run at once, one per node. Nodes report the same IP; node ids tell them apart.
Worker nodes also have one unit of a custom resource (WORKER_ONLY): a search whose trials ask for it
runs them on worker nodes only, one at a time, whatever the timing.
The storage path is a folder on this machine, which both nodes reach, like S3 or EFS on a real cluster.
"""
import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ray_cluster import LocalCluster, is_loopback

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]   # a cluster of two nodes; searches of up to 300 s each

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 8
SPACE = f"""
search:
  samples: 4
  epochs: {EPOCHS}
  grace_period: {EPOCHS}   # ASHA stops nothing early: every trial runs all epochs, the faults are what is tested
  seed: 0
  cpus_per_trial: 1
  max_concurrent: 2        # both nodes at once: without it Tune, given a searcher, starts one trial at a time
  max_failures: 3          # a trial lost with its node is retried from its last checkpoint
params:
  model: cnn
  image_size: 32
  weights: none
  normalize: half
  batch_size: 16
  head_width: 64
  lr: {{loguniform: [1.0e-3, 1.0e-2]}}
"""

WORKER_ONLY = {"worker_only": 1}
# dogs.ray_trainable.wait_for_workers on every node: a trial worker's first trial waits until as many workers as the
# folder's `slots` file says have started one; only while the folder exists (test_search_spreads_...)
BARRIER = "barrier"

# The search as a driver whose trials also ask for the custom resources given first on its command line:
# Tune's own per-trial request (tune.with_resources, as tune.search makes it), widened.
PINNED_SEARCH = """
import json, sys
import ray.tune
extra = json.loads(sys.argv.pop(1))
with_resources = ray.tune.with_resources
ray.tune.with_resources = lambda trainable, request: with_resources(trainable, {**request, **extra})
from tune.search import main
sys.exit(main())
"""


# -- a cluster for the module; each test gets a live worker node ---------------------------------

def barrier_env(cluster):
    from dogs.ray_trainable import WORKERS_ENV

    return {WORKERS_ENV: str(cluster.root / BARRIER)}


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.add_node("head", head=True, env=barrier_env(c))
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


@pytest.fixture
def two_nodes(cluster):
    """The cluster with a live worker node (a test before may have killed the last one)."""
    alive = [n for n in cluster.alive_names() if n != "head"]
    name = alive[0] if alive else f"worker{len(cluster.nodes)}"
    worker_id = cluster.node_id(name) if alive else cluster.add_node(name, resources=WORKER_ONLY,
                                                                      env=barrier_env(cluster))
    return cluster, name, cluster.node_id("head"), worker_id


# -- running the search ----------------------------------------------------------------------------

def start_search(cluster, data, name, *extra, resources=None):
    """The search driver as its own process, joined to the cluster; its trials also ask for `resources`.

    Ray saves the experiment state, and copies the trials' files (result.json) to the storage path with it,
    every 2 s here (TUNE_GLOBAL_CHECKPOINT_S) instead of every max(10 s, 19 x a save's time): the tests read
    those files while the search runs, and a killed driver is resumed from such a save."""
    space = cluster.root / "space.yaml"
    space.write_text(SPACE)
    driver = ["-c", PINNED_SEARCH, json.dumps(resources)] if resources else ["-m", "tune.search"]
    cmd = [sys.executable, *driver, "--space", str(space), "--data", str(data),
           "--storage", str(cluster.root / "storage"), "--name", name, "--address", cluster.address, *extra]
    with open(cluster.root / f"driver-{name}-{len(extra)}.log", "w") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=cluster.env(TUNE_GLOBAL_CHECKPOINT_S="2"), stdout=log,
                                stderr=subprocess.STDOUT,
                                start_new_session=True)


def driver_log(cluster, name):
    logs = sorted(cluster.root.glob(f"driver-{name}-*.log"))
    return "\n".join(path.read_text(errors="replace")[-4000:] for path in logs)


def run_search(cluster, data, name, *extra, timeout=240):
    proc = start_search(cluster, data, name, *extra)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    assert rc == 0, driver_log(cluster, name)
    return cluster.root / "storage" / name


def results(exp_dir):
    """{trial folder name: [every result row, in order]} from each trial's result.json."""
    out = {}
    for path in sorted(Path(exp_dir).glob("trial_*/result.json")):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:      # a line being written right now
                break
        out[path.parent.name] = rows
    return out


def live(exp_dir):
    """{trial folder: epochs reported} of the trials running now, read in the Optuna study (live, unlike the
    trials' files in the storage path); {} before the study can be read."""
    from tune.study import open_study

    try:
        with open_study(exp_dir) as study:
            trials = study.trials
    except Exception:
        return {}
    return {"trial_" + t.user_attrs["tune_trial_id"]: len(t.intermediate_values) for t in trials
            if t.state.name == "RUNNING" and "tune_trial_id" in t.user_attrs}


def saved_status(exp_dir):
    """{trial folder: status} in the experiment state Ray saved last (what --resume restores; read as JSON)."""
    state = json.loads(max(Path(exp_dir).glob("experiment_state-*.json")).read_text())
    trials = [json.loads(trial) for trial, _ in state["trial_data"]]
    return {"trial_" + t["trial_id"]: t["status"] for t in trials}


def finished(rows):
    return bool(rows) and rows[-1]["epoch"] == EPOCHS


def wait_until(condition, proc, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, f"the search ended (rc {proc.returncode}) before {what}"
        time.sleep(0.2)
    raise TimeoutError(f"no {what} after {timeout}s")


def trials_csv(exp_dir):
    table = pd.read_csv(Path(exp_dir) / "trials.csv", dtype={"trial_id": str})
    table["folder"] = "trial_" + table.trial_id.astype(str)
    return table.set_index("folder")


# -- the tests -------------------------------------------------------------------------------------

def test_nodes_listen_on_loopback_only_and_refuse_a_wrong_token(two_nodes):
    cluster = two_nodes[0]
    addresses = cluster.listening_addresses()
    assert addresses and all(map(is_loopback, addresses)), addresses
    wrong = cluster.root / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    code = f"import ray; ray.init(address={cluster.address!r}); print('JOINED', flush=True)"
    driver = subprocess.Popen([sys.executable, "-c", code], env=cluster.env(RAY_AUTH_TOKEN_PATH=str(wrong)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        answer = next((line for line in driver.stdout if "InvalidAuthToken" in line or "JOINED" in line), "")
    finally:
        driver.kill()
        driver.wait()
    assert "InvalidAuthToken" in answer

def test_search_spreads_trials_over_both_nodes(two_nodes, tiny_imagefolder):
    # Tune (reuse_actors=True) hands a trial whose node is still starting a Python worker to an actor freed
    # elsewhere: on a loaded machine all 4 trials once ran on the head. The first trial of each worker waits
    # for the other node's (the barrier a local search sets up itself), so both nodes run trials whatever the timing.
    cluster, _, head_id, worker_id = two_nodes
    barrier = cluster.root / BARRIER
    barrier.mkdir()
    (barrier / "slots").write_text("2")
    try:
        exp_dir = run_search(cluster, tiny_imagefolder, "spread")
        assert len(list(barrier.glob("worker-*"))) >= 2   # the workers of both nodes met at the barrier
    finally:
        shutil.rmtree(barrier)

    rows = results(exp_dir)
    nodes_used = {row["node_id"] for trial in rows.values() for row in trial}
    assert nodes_used == {head_id, worker_id}
    assert len({row["hostname"] for trial in rows.values() for row in trial}) == 1   # one machine
    table = trials_csv(exp_dir)
    assert list(table.status) == ["TERMINATED"] * 4 and list(table.epochs) == [EPOCHS] * 4
    for folder in table.index:      # results and checkpoints written by both nodes, in the one storage path
        assert (exp_dir / folder / "result.json").is_file()
        kept = list((exp_dir / folder).glob("checkpoint_*/checkpoint.pt"))
        assert 1 <= len(kept) <= 2           # of 8 epochs' checkpoints, the best and the last are kept
        assert Path(table.loc[folder, "checkpoint"]).is_relative_to(exp_dir)


def test_worker_node_lost_mid_trial(two_nodes, tiny_imagefolder):
    # the trials run on worker nodes only (WORKER_ONLY), one at a time: the first finishes on the worker,
    # the second is lost with it, and continues on the node that replaces it (as an autoscaler would)
    cluster, worker, _, worker_id = two_nodes
    proc = start_search(cluster, tiny_imagefolder, "node-loss", "--samples", "3", resources=WORKER_ONLY)
    exp_dir = cluster.root / "storage" / "node-loss"
    try:
        # wait for a finished trial and a trial on the worker node with a checkpoint and epochs to go
        def victim():
            rows, running = results(exp_dir), [t for t, n in live(exp_dir).items() if 2 <= n <= EPOCHS - 3]
            return any(map(finished, rows.values())) and running and (running[0], rows)
        trial, before = wait_until(victim, proc, 300, "a finished trial and a running one")
        cluster.kill_node(worker)
        killed_at = time.time()
        new_id = cluster.add_node(f"worker{len(cluster.nodes)}", resources=WORKER_ONLY)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, driver_log(cluster, "node-loss")

    after = results(exp_dir)
    table = trials_csv(exp_dir)
    assert len(table) == 3 and (table.status == "TERMINATED").all() and (table.epochs == EPOCHS).all(), table
    assert {row["node_id"] for rows in before.values() for row in rows} == {worker_id}
    assert {row["node_id"] for rows in after.values() for row in rows} == {worker_id, new_id}   # never the head
    # the lost trial went on from its last checkpoint on the new node, not from epoch 1
    rows = after[trial]
    last_on_worker = max(r["epoch"] for r in rows if r["node_id"] == worker_id)
    on_new = [r for r in rows if r["node_id"] == new_id]
    assert on_new, "the lost trial never ran again"
    assert 1 < on_new[0]["epoch"] <= last_on_worker + 1
    assert [r["epoch"] for r in on_new] == list(range(on_new[0]["epoch"], EPOCHS + 1))
    # every trial that had finished before the loss keeps its result
    for folder, rows_before in before.items():
        if finished(rows_before):
            assert after[folder] == rows_before
            assert table.loc[folder, "val_acc"] == pytest.approx(rows_before[-1]["val_acc"])
    print(f"\nnode loss: {trial} lost after epoch {last_on_worker}; epoch {on_new[0]['epoch']} reported "
          f"from the new node {on_new[0]['timestamp'] - killed_at:.0f}s after the kill; "
          f"search done {time.time() - killed_at:.0f}s after the kill")


def test_driver_sigkill_then_resume(two_nodes, tiny_imagefolder):
    cluster, _, _, _ = two_nodes
    proc = start_search(cluster, tiny_imagefolder, "crash")
    exp_dir = cluster.root / "storage" / "crash"
    try:
        def mid_search():   # a trial finished in the state Ray saved (its periodic save may lag the trial's end)
            rows, running = results(exp_dir), [t for t, n in live(exp_dir).items() if 1 <= n <= EPOCHS - 3]
            if not (any(map(finished, rows.values())) and running):
                return False
            try:
                saved = saved_status(exp_dir)
            except (ValueError, KeyError):   # no state saved yet, or one being written
                return False
            return any(finished(r) and saved.get(t) == "TERMINATED" for t, r in rows.items()) and rows
        wait_until(mid_search, proc, 180, "a finished trial (saved as such) and a running one")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(1)   # let the last result line land (the trials die with their driver)
    before = results(exp_dir)
    # finished: in the state --resume restores (a trial that finished after Ray's last save runs its last
    # epochs again from the checkpoint that save names, as an unfinished one)
    saved = saved_status(exp_dir)
    done_before = {t: r for t, r in before.items() if finished(r) and saved.get(t) == "TERMINATED"}
    assert done_before, (saved, {t: len(r) for t, r in before.items()})
    from tune.report import study_states
    from tune.study import open_study
    from tune import spaces

    space = spaces.load(exp_dir / "search_space.yaml")
    states_before = study_states(exp_dir, space)

    resumed = time.time()
    run_search(cluster, tiny_imagefolder, "crash", "--resume")
    resume_s = time.time() - resumed

    after = results(exp_dir)
    table = trials_csv(exp_dir)
    # a trial the killed driver had just started, before Ray saved its state, is never resumed: ABANDONED
    # (its configuration goes to a new trial); every other one finished
    abandoned = table[table.status == "ABANDONED"]
    table = table[table.status != "ABANDONED"]
    print(f"\ndriver crash: killed with {len(done_before)} of {len(before)} trials finished, study "
          f"{states_before}; --resume finished the search in {resume_s:.0f}s "
          f"({len(abandoned)} trial folder(s) abandoned)")
    assert len(table) == 4 and (table.status == "TERMINATED").all() and (table.epochs == EPOCHS).all(), table
    assert not set(abandoned.index) & set(done_before)
    for folder, rows in done_before.items():       # finished trials were not run again
        assert after[folder] == rows
    for folder, rows in before.items():            # unfinished ones went on from a checkpoint
        if rows and folder not in done_before and folder not in abandoned.index:
            epochs, ran = [r["epoch"] for r in after[folder]], [r["epoch"] for r in rows]
            # it continued from the checkpoint Ray's last save names (none: from epoch 1): the epochs run after
            # that save ran again, then on to the last; nothing before it was lost or repeated
            # (the killed driver's last epochs may reach the folder only with the resumed driver's first save)
            back = [i for i in range(1, len(epochs)) if epochs[i] <= epochs[i - 1]]   # where it went back: once at most
            first, rerun = (epochs[:back[0]], epochs[back[0]:]) if back else (epochs, [])
            assert len(back) <= 1 and epochs[:len(ran)] == ran and first == list(range(1, len(first) + 1)), epochs
            assert (first + rerun)[-1] == EPOCHS and rerun == list(range(rerun[0], EPOCHS + 1)) if rerun else True, epochs
    # the Optuna study (study.db) has exactly the experiment's trials: one study trial per Tune trial, all
    # complete with the trial's score, none left RUNNING, none doubled
    # (and a FAIL one per abandoned folder that had reported an epoch)
    assert sum(states_before.values()) >= len(before) and states_before.get("RUNNING", 0) >= 1
    with open_study(exp_dir) as study:
        trials = study.trials
    lost = [t for t in trials if "trial_" + t.user_attrs["tune_trial_id"] in abandoned.index]
    trials = [t for t in trials if t not in lost]
    assert {t.state.name for t in lost} <= {"FAIL"} and {t.state.name for t in trials} == {"COMPLETE"}
    by_id = {t.user_attrs["tune_trial_id"]: t for t in trials}
    assert len(trials) == len(by_id) == 4 and set(by_id) == set(table.trial_id), trials
    for row in table.itertuples():
        assert by_id[row.trial_id].value == pytest.approx(row.best_val_acc)
        assert sorted(by_id[row.trial_id].intermediate_values) == list(range(1, EPOCHS + 1))
