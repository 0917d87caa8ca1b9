"""--resume of an experiment whose Ray state is cut (a full disk, a kill during Ray's write) or missing (tune.resume):
one line, the run rebuilt from the trial folders, `samples` trials in all and every one finished, exit 0; never
Ray's "Failed to restore the run state", a trial beyond `samples` or an "Interrupted" that the next --resume repeats."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import TWO_TRIAL_SPACE, run_main
from tune import search
from tune.study import open_study

RAY_LINES = ("Failed to restore", "Traceback", "Restarting experiment")


def damage(exp_dir, how):
    """Cut Ray's newest experiment state as a full disk or a kill leaves it (half of it, or nothing), or remove it."""
    state = sorted(Path(exp_dir).glob("experiment_state-*.json"))[-1]
    if how == "missing":
        for path in Path(exp_dir).glob("experiment_state-*.json"):
            path.unlink()
    else:
        text = state.read_text()
        state.write_text(text[:len(text) // 2] if how == "cut" else "")


def results(exp_dir):
    return {p.parent.name: p.read_text() for p in Path(exp_dir).glob("trial_*/result.json")}


def resumed(storage, name, *flags):
    code, out, err = run_main(search, ["--resume", "--storage", str(storage), "--name", name, *flags])
    assert code == 0, out[-3000:] + err[-3000:]
    assert not [line for line in RAY_LINES if line in out + err], (out + err)[-3000:]
    assert "Interrupted" not in out and "--resume" not in out, out[-3000:]   # nothing left to continue
    return out, err


def table_of(exp_dir):
    return pd.read_csv(Path(exp_dir, "trials.csv"), dtype={"trial_id": str})


@pytest.fixture(scope="module")
def finished(tiny_imagefolder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cut")
    (folder / "two.yaml").write_text(TWO_TRIAL_SPACE)
    code, out, err = run_main(search, ["--space", str(folder / "two.yaml"), "--data", str(tiny_imagefolder),
                                       "--storage", str(folder / "runs"), "--name", "two"])
    assert code == 0, out[-3000:] + err[-3000:]
    return folder / "runs" / "two"


@pytest.mark.parametrize("how", ["cut", "missing"])
def test_a_finished_search_with_a_cut_or_missing_state_runs_nothing_more(finished, tmp_path, how):
    exp_dir = shutil.copytree(finished, tmp_path / "runs" / "two")
    damage(exp_dir, how)
    before = results(exp_dir)
    out, err = resumed(tmp_path / "runs", "two")
    assert results(exp_dir) == before   # no trial ran again, none beyond samples (was: a third trial)
    table = table_of(exp_dir)
    assert len(table) == 2 and set(table.status) == {"TERMINATED"} and "Search finished" in out
    assert err.count("rebuilding the run from the trial folders: 2 finished trial(s) kept, 0 unfinished run again "
                     "from their first epoch, 0 new; 2 in all") == 1, err
    with open_study(exp_dir) as study:
        assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE"]


def test_an_interrupted_search_with_a_cut_state_finishes_every_trial(tiny_imagefolder, tmp_path):
    """Stopped by its time budget with trials unfinished or not started, then its state cut: --resume reruns the
    unfinished ones with their configurations, adds the missing ones, `samples` finished in all; the command it
    printed then finds nothing left to do."""
    samples, epochs = 3, 3
    (tmp_path / "space.yaml").write_text(TWO_TRIAL_SPACE.replace("samples: 2, epochs: 2, grace_period: 2",
                                                                 f"samples: {samples}, epochs: {epochs}, "
                                                                 f"grace_period: {epochs}, max_concurrent: 1"))
    storage, name = tmp_path / "runs", "stopped"
    exp_dir = storage / name
    code, out, err = run_main(search, ["--space", str(tmp_path / "space.yaml"), "--data", str(tiny_imagefolder),
                                       "--storage", str(storage), "--name", name, "--time-budget", "1s"])
    assert code == 0 and "--resume" in out, out[-3000:] + err[-3000:]
    first = table_of(exp_dir)
    unfinished = set(first.trial_id[first.status != "TERMINATED"])
    done = set(first.trial_id[first.status == "TERMINATED"])
    assert unfinished or len(first) < samples   # the budget stopped it before the end
    configs = {row.trial_id: row.lr for row in first.itertuples()}
    before = results(exp_dir)
    damage(exp_dir, "cut")

    out, err = resumed(storage, name, "--time-budget", "none")   # this session without the first one's budget
    table = table_of(exp_dir)
    live = table[table.status != "ABANDONED"]
    assert len(live) == samples and set(live.status) == {"TERMINATED"} and (live.epochs == epochs).all()
    assert set(table.trial_id[table.status == "ABANDONED"]) == unfinished   # kept, never ranked
    for trial_id in done | unfinished:   # the old folders are not written again
        assert results(exp_dir)[f"trial_{trial_id}"] == before[f"trial_{trial_id}"]
    rerun = live[~live.trial_id.isin(done)]
    assert sorted(configs[t] for t in unfinished) == sorted(rerun.lr)[:len(unfinished)] or \
        {configs[t] for t in unfinished} <= set(rerun.lr)   # each unfinished configuration ran again
    with open_study(exp_dir) as study:
        states = {t.user_attrs.get("tune_trial_id"): t.state.name for t in study.trials}
        retried = [t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs]
    assert all(states[t] == "COMPLETE" for t in live.trial_id)
    assert len(retried) == len(unfinished)
    assert f"{len(done)} finished trial(s) kept, {len(unfinished)} unfinished run again" in err, err

    # the search is finished: --resume again (Ray's state now whole) runs nothing
    after = results(exp_dir)
    out, err = resumed(storage, name, "--time-budget", "none")
    assert "rebuilding" not in err and results(exp_dir) == after
    assert json.dumps(sorted(table_of(exp_dir).status)) == json.dumps(sorted(table.status))
