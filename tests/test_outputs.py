"""What the commands write: never over a file they did not write, every name one CSV row, and a quiet end when
the reader of their output leaves (`| head`)."""
import csv
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, strategies as st

from dogs import train
from dogs.files import CSV, is_ours, write_csv
from tune import best, search
from conftest import run_main

ROOT = Path(__file__).resolve().parent.parent

# any text a file name (or a class name, an error) can hold: control characters, separators, quotes, unicode lines
NAMES = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1),
                 min_size=1, max_size=20)


@given(names=NAMES)
def test_every_name_is_one_row_for_pandas_and_for_the_csv_module(names, tmp_path_factory):
    table = pd.DataFrame({"file": names, "class_index": range(len(names)), "error": [None] * len(names)})
    path = write_csv(table, tmp_path_factory.mktemp("csv") / "predictions.csv")
    text = table.to_csv(**CSV)   # trials.csv's form: the same text, written through tune.storage
    assert path.read_bytes() == text.encode()
    for source in (path, io.StringIO(text, newline="")):
        assert pd.read_csv(source, dtype=str, keep_default_na=False)["file"].tolist() == names
    with open(path, newline="") as f:
        assert [row["file"] for row in csv.DictReader(f)] == names


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """dogs.train's folder after one epoch on the built-in digits (seconds)."""
    out = tmp_path_factory.mktemp("train") / "run"
    code, _, err = run_main(train, ["--set", "epochs=1", "model=cnn", "--out", str(out)])
    assert code in (0, None), err
    return out


def test_every_file_a_run_writes_is_recognised_as_ours_and_a_users_file_of_that_name_is_not(trained, tmp_path):
    assert set(train.WRITES) <= {p.name for p in trained.iterdir()}
    for name in train.WRITES:
        assert is_ours(trained / name), name
        (tmp_path / name).write_text("the user's own file\n")
        assert not is_ours(tmp_path / name), name


def test_out_naming_a_file_or_holding_a_users_file_is_one_line_and_nothing_is_written(trained, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "submission.csv").write_text("my own\n")
    (tmp_path / "mine" / "config.yaml").write_text("my: settings\n")
    for module, argv, message in (
            (train, ["--set", "epochs=1", "model=cnn", "--out", str(tmp_path / "notes.txt")], "it is a file, not a folder"),
            (train, ["--set", "epochs=1", "model=cnn", "--out", str(tmp_path / "mine")], "submission.csv would be replaced"),
            (best, ["--experiment", str(trained), "--out", str(tmp_path / "notes.txt")], "it is a file, not a folder"),
            (best, ["--experiment", str(trained), "--out", str(tmp_path / "mine")], "config.yaml would be replaced"),
            (best, ["--experiment", str(trained), "--submit", "--out", str(tmp_path / "mine")],
             "its config.yaml, submission.csv would be replaced, and they are not what this project writes"),
    ):
        code, _, err = run_main(module, argv)
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["config.yaml", "submission.csv"]
    assert (tmp_path / "mine" / "submission.csv").read_text() == "my own\n"


def test_a_fifo_as_config_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "config.yaml")
    done = []
    thread = threading.Thread(target=lambda: done.append(run_main(train, ["--config", str(tmp_path / "config.yaml"),
                                                                          "--out", str(tmp_path / "out")])),
                              daemon=True)
    thread.start()
    thread.join(60)
    assert done, "dogs.train --config FIFO still waiting after 60 s"
    code, _, err = done[0]
    assert code == 2 and "it is a FIFO (named pipe), not a file" in err and err.count("\n") == 1, err


def reader_gone(module, argv, cwd, timeout=300):
    """(exit status, stderr) of `python -m module argv` whose stdout's reader has left before it wrote (| head)."""
    with open(Path(cwd) / "stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=err,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        proc.stdout.close()
        try:
            code = proc.wait(timeout=timeout)
        finally:
            proc.kill()
        err.seek(0)
        return code, err.read()


@pytest.mark.parametrize("command", ["dogs.train", "tune.best"])
def test_a_table_into_a_closed_pipe_ends_quietly(trained, tmp_path, command):
    argv = {"dogs.train": ["--set", "epochs=1", "model=cnn", "--out", "run"],   # the epoch table
            "tune.best": ["--checkpoint", str(trained / "best.pt"), "--predict", str(trained.parent), "--out", "p"]}
    code, err = reader_gone(command, argv[command], tmp_path)
    assert code == 141 and "Traceback" not in err and "BrokenPipeError" not in err, (code, err)


class ClosedPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_the_search_summary_into_a_closed_pipe_ends_quietly(monkeypatch):
    # a real search takes minutes: its summary printed by a stand-in, through tune.search's own main
    monkeypatch.setattr(search, "search", lambda args: print("Search finished: 4 trials") or 0)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert search.main([]) == 141
