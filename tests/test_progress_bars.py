"""The one-off builds (the decoded-image cache, the frozen features) report their progress to a bar: tqdm's on
dogs.train's terminal, whole lines (bars.Lines) in a search's trial (its console: tests/test_search.py, in a log
file: tests/test_budgets.py)."""
import io
import re

import pytest
import torch

from conftest import make_imagefolder
from dogs import data, models, progress_bars as bars
from dogs.config import resolve
from dogs.engine import make_batches
from dogs.splits import load_splits


class Recorder:
    """A tqdm-like bar that keeps what it was told."""
    made = []

    def __init__(self, total, desc, unit):
        self.total, self.desc, self.done, self.closed = total, desc, 0, False
        Recorder.made.append(self)

    def update(self, n):
        self.done += n

    def close(self):
        self.closed = True


@pytest.fixture
def recorded(monkeypatch):
    Recorder.made = []
    monkeypatch.setattr(bars, "make", Recorder)
    return Recorder.made


def test_image_decode_and_feature_cache_builds_report_every_image_once(tmp_path, recorded):
    root = make_imagefolder(tmp_path / "d", n_train=3, n_val=2, n_test=0, awkward=False)
    n_train = len(data.labeled_split(root, data.TRAIN)[1])
    config = resolve({"data": str(root), "weights": "none", "image_size": 16, "cache_dir": str(tmp_path / "cache")})
    _, classes, train, _ = load_splits(config, log_fn=lambda m: None)
    decodes = [bar for bar in recorded if bar.desc.startswith("decoding")]
    assert decodes and all(bar.closed and bar.done == bar.total for bar in decodes)
    assert f"decoding {n_train} images at 16px (once)" in [bar.desc for bar in decodes]
    model = models.build_model(config, len(classes)).to(memory_format=torch.channels_last)
    make_batches(train, model, config, torch.device("cpu"), None, train=False)
    features = [bar for bar in recorded if bar.desc.startswith("frozen features")]
    assert len(features) == 1 and features[0].closed and features[0].done == features[0].total == n_train

    # built once: a second run reports nothing
    recorded.clear()
    _, _, train, _ = load_splits(config, log_fn=lambda m: None)
    make_batches(train, model, config, torch.device("cpu"), None, train=False)
    assert recorded == []


@pytest.mark.parametrize("every_s", [0.0, 3600.0])
def test_a_bar_in_a_trial_is_whole_lines_its_progress_at_most_every_few_seconds_and_its_end(every_s):
    out = io.StringIO()
    bar = bars.Lines(5, "decoding 5 images at 16px (once)", "img", every_s=every_s, out=out)
    for _ in range(5):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines[:-1] == ([f"decoding 5 images at 16px (once): {n}/5 img" for n in range(1, 5)] if every_s == 0 else [])
    assert re.fullmatch(r"decoding 5 images at 16px \(once\): 5/5 img in [\d.]+ s", lines[-1]), lines
