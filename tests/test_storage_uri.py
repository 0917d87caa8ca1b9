"""--storage / --experiment as a URI: a tiny search into S3 (moto's S3 server on 127.0.0.1), resumed from
there, and tune.best predicting from the checkpoint in the bucket."""
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs
import pytest

from tune import best, search, study
from conftest import TWO_TRIAL_SPACE as SPACE, run_main

AWS_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(pyarrow S3 filesystem, query that points a URI at it) of a moto S3 server with the bucket `dogs`."""
    moto_server = Path(sys.executable).with_name("moto_server")
    if not moto_server.exists():
        pytest.skip("moto[server] is not installed (pip install -e '.[test]')")
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    saved = {key: os.environ.get(key) for key in AWS_ENV}
    os.environ.update(AWS_ENV)   # Ray's workers inherit these when the search starts Ray
    try:
        query = f"endpoint_override=127.0.0.1:{port}&scheme=http"
        fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://dogs?{query}&allow_bucket_creation=true")
        deadline = time.time() + 30
        while True:   # the server takes a moment to listen
            try:
                fs.create_dir("dogs")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        yield fs, query
    finally:
        proc.kill()
        proc.wait()
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def read(fs, path):
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def results(fs, exp_path):
    """{trial folder: its result.json} in the bucket."""
    files = fs.get_file_info(pyarrow.fs.FileSelector(exp_path, recursive=True))
    return {info.path.split("/")[-2]: read(fs, info.path) for info in files if info.base_name == "result.json"}


def test_search_resume_and_best_on_s3(s3, tiny_imagefolder, tmp_path):
    fs, query = s3
    (tmp_path / "space.yaml").write_text(SPACE)
    runs = f"s3://dogs/runs?{query}"

    # a search straight into the bucket
    code, out, err = run_main(search, ["--space", str(tmp_path / "space.yaml"), "--data", str(tiny_imagefolder),
                                       "--storage", runs, "--name", "s3e"])
    assert code == 0, out[-3000:] + err[-3000:]
    assert fs.get_file_info("dogs/runs/s3e/search_space.yaml").type == pyarrow.fs.FileType.File
    table = pd.read_csv(io.StringIO(read(fs, "dogs/runs/s3e/trials.csv")), dtype={"trial_id": str})
    assert len(table) == 2 and set(table.status) == {"TERMINATED"}
    assert table.path.str.startswith("s3://dogs/runs/s3e/trial_").all()
    assert table.checkpoint.str.startswith("s3://dogs/runs/s3e/trial_").all()
    files = [info.path for info in fs.get_file_info(pyarrow.fs.FileSelector("dogs/runs/s3e", recursive=True))]
    for trial_dir, name in zip(table.path.str.removeprefix("s3://"), table.trial):
        # TensorBoard: a run per trial, named as everywhere (tune.experiment), uploaded with the experiment
        assert any(f.startswith(f"dogs/runs/s3e/tensorboard/{name}/events.out.tfevents") for f in files), name
        assert any(f.startswith(f"{trial_dir}/checkpoint_") for f in files), trial_dir
    assert "optuna study {'COMPLETE': 2}" in out
    # the study: a local SQLite file on the driver while it runs, copied into the bucket with Ray's state
    live = study.sqlite_path(study.study_location(f"s3://dogs/runs/s3e?{query}")[0])
    assert fs.get_file_info("dogs/runs/s3e/study.db").type == pyarrow.fs.FileType.File and live.is_file()

    # --resume of the finished experiment (the latest one in the bucket): nothing runs again, and the study
    # comes from the bucket (the driver's local file is gone, as on another machine)
    live.unlink()
    before = results(fs, "dogs/runs/s3e")
    code, out, err = run_main(search, ["--resume", "--storage", runs])
    assert code == 0, out[-3000:] + err[-3000:]
    assert f"Resuming s3://dogs/runs/s3e?{query}" in out
    assert results(fs, "dogs/runs/s3e") == before and len(before) == 2
    assert "optuna study {'COMPLETE': 2}" in out and live.is_file()
    with study.open_study(f"s3://dogs/runs/s3e?{query}") as opened:
        assert sorted(t.user_attrs["tune_trial_id"] for t in opened.trials) == sorted(table.trial_id)

    # tune.best reads the experiment from the bucket and predicts from its downloaded checkpoint
    experiment = f"s3://dogs/runs/s3e?{query}"
    code, _, err = run_main(best, ["--experiment", experiment, "--submit"])
    assert code == 2 and "--out" in err
    code, out, err = run_main(best, ["--experiment", experiment, "--submit", "--no-retrain", "--out", str(tmp_path)])
    assert code == 0, out[-3000:] + err[-3000:]
    tops = table[table.best_val_acc == table.best_val_acc.max()]   # both trials may reach 1.0
    assert any(trial_id in out for trial_id in tops.trial_id) and f"{tops.best_val_acc.iloc[0]:.4f}" in out
    submission = pd.read_csv(tmp_path / "submission.csv")
    assert list(submission.columns) == ["Id", "Class"]
    assert sorted(submission.Id) == sorted(p.name for p in (tiny_imagefolder / "Test").iterdir())
    assert set(submission.Class) <= {0, 1, 2}


def test_checkpoints_are_pruned_in_the_bucket(s3):
    # tune.callbacks deletes through the filesystem of Tune's checkpoints: here the bucket's
    from ray import tune
    from types import SimpleNamespace

    from tune.callbacks import KeepBestAndLatest

    fs, _ = s3
    keep, trial_dir = KeepBestAndLatest("val_acc", "max"), "dogs/prune/exp/trial_a"
    for epoch, score in enumerate((0.9, 0.1, 0.2, 0.3)):
        name = f"checkpoint_{epoch:06d}"
        with fs.open_output_stream(f"{trial_dir}/{name}/checkpoint.pt") as f:
            f.write(b"x")
        keep.on_checkpoint(iteration=0, trials=[], trial=SimpleNamespace(
            trial_id="a", last_result={"val_acc": score, "checkpoint_dir_name": name}),
            checkpoint=tune.Checkpoint(path=f"{trial_dir}/{name}", filesystem=fs))
    keep.get_state()
    with fs.open_output_stream("dogs/prune/exp/experiment_state-x.json") as f:   # Ray's copy of the save lands
        f.write(b"{}")
    keep.on_experiment_end(trials=[])
    files = fs.get_file_info(pyarrow.fs.FileSelector("dogs/prune", recursive=True))
    assert sorted(i.path for i in files if i.type == pyarrow.fs.FileType.File) == [
        "dogs/prune/exp/experiment_state-x.json",
        f"{trial_dir}/checkpoint_000000/checkpoint.pt", f"{trial_dir}/checkpoint_000003/checkpoint.pt"]
