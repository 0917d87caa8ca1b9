"""A full disk while the search writes (issue #17): one line naming the path, what was being written and the
free space, exit non-zero, and an experiment that the same command (nothing ran yet) or --resume finishes once
there is space. The full disk is injected (OSError ENOSPC) at the writes: the search's own first file, and a
checkpoint Tune registers mid-search."""
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tune import search, storage
from tune.study_searcher import StudySearcher
from conftest import run_main

SPACE = ("search: {samples: 2, epochs: 2, grace_period: 2, max_concurrent: 1, seed: 0}\n"
         "params: {model: cnn, image_size: 16, batch_size: 16, lr: {loguniform: [1e-3, 1e-2]}}\n")


def full(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_is_one_line_and_the_search_finishes_once_there_is_space(tiny_imagefolder, tmp_path, monkeypatch):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    runs, name = tmp_path / "runs", "full"
    exp_dir = runs / name
    argv = ["--space", str(space), "--data", str(tiny_imagefolder), "--storage", str(runs), "--name", name]

    # the disk is full when the search writes its first file: one line; nothing ran, and the folder it made is gone
    write_text = storage.write_text

    def no_space_for_the_space_file(location, text):
        if str(location).endswith("search_space.yaml"):
            raise full(location)
        write_text(location, text)

    monkeypatch.setattr(storage, "write_text", no_space_for_the_space_file)
    code, out, err = run_main(search, argv)
    assert code == 2, out[-3000:] + err[-3000:]
    assert err.count("\n") == 1 and err.startswith(f"dogs-search: error: cannot write a new experiment "
                                                   f"({exp_dir}/search_space.yaml): No space left on device; "), err
    assert " MB free on " in err and err.rstrip().endswith("free space, then rerun the same command")
    assert not exp_dir.exists()
    monkeypatch.setattr(storage, "write_text", write_text)

    # the same command, and the disk fills up when the search saves its state after the first trial ended
    save, saved = StudySearcher.save, []

    def no_space_once_a_trial_ended(self, checkpoint_path):
        if any(state == "COMPLETE" for state in self.states().values()):
            saved.append(checkpoint_path)
            raise full(checkpoint_path)
        save(self, checkpoint_path)

    monkeypatch.setattr(StudySearcher, "save", no_space_once_a_trial_ended)
    code, out, err = run_main(search, argv)
    assert code == 2, out[-3000:] + err[-3000:]
    resume = f"python -m tune.search --resume --storage {runs} --name {name}"
    assert err.splitlines()[-1].startswith(f"dogs-search: error: cannot write the experiment (Ray's state, the "
                                           f"trials' results, study.db) ({saved[0]}): No space left on device; "), err
    assert err.rstrip().endswith(f"free space, then continue with  {resume}") and "Traceback" not in err
    monkeypatch.setattr(StudySearcher, "save", save)

    # space again: the printed --resume finishes every trial
    code, out, err = run_main(search, resume.split()[3:])
    assert code == 0, out[-3000:] + err[-3000:]
    table = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    assert len(table) == 2 and set(table.status) == {"TERMINATED"} and (table.epochs == 2).all()


def test_a_search_on_a_small_filesystem_says_so_in_one_line_and_finishes_once_it_grows(tiny_imagefolder, tmp_path):
    """The real thing: a 300 KB tmpfs as --storage fills up wherever it does (Ray's files, a checkpoint, study.db);
    once it is 50 MB, the command the line prints finishes the search. Runs where a tmpfs can be mounted (root with
    CAP_SYS_ADMIN, as CI); elsewhere skipped with the reason (pytest -ra prints it; the injected test above covers
    the same lines there)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs root and mount (CI runs as root): the injected full-disk test covers the lines")
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (root and CAP_SYS_ADMIN needed): {mounted.stderr.decode().strip()}")
    try:
        space = tmp_path / "space.yaml"
        space.write_text(SPACE)
        argv = ["--space", str(space), "--data", str(tiny_imagefolder), "--storage", str(small), "--name", "full"]
        code, out, err = run_main(search, argv)
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("dogs-search: error: cannot write ") and "No space left on device" in last \
            and f"free on {small}" in last, out[-2000:] + err[-3000:]
        subprocess.run(["mount", "-o", "remount,size=50m", str(small)], check=True)
        if "continue with  python -m tune.search " in last:
            argv = last.split("continue with  python -m tune.search ")[1].split()
        code, out, err = run_main(search, argv)
        assert code == 0, out[-3000:] + err[-3000:]
        table = pd.read_csv(small / "full" / "trials.csv", dtype={"trial_id": str})
        assert (table.status == "TERMINATED").sum() == 2, table.to_string() + out[-3000:] + err[-3000:]
    finally:
        subprocess.run(["umount", "-l", str(small)])
