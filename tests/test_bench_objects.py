"""bench/objects.py: the generated textured-object photos are seeded (same bytes) and learnable above chance."""
import sys
from pathlib import Path

import torch

from dogs import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from objects import make_objects  # noqa: E402


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*.jpg"))}


def test_same_seed_writes_the_same_bytes_and_another_seed_other_photos(tmp_path):
    make_objects(tmp_path / "a", classes=3, train=4, val=2, test=2, size=32, seed=1)
    make_objects(tmp_path / "b", classes=3, train=4, val=2, test=2, size=32, seed=1)
    make_objects(tmp_path / "c", classes=3, train=4, val=2, test=2, size=32, seed=2)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 3 * (4 + 4 + 2 + 2)   # Train in task/ and holdout/, Validation, the held-out test photos
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)
    # holdout/Train is the task's Train; holdout/Validation (the test photos) is none of the task's photos
    assert all(a[Path("holdout", *k.parts[1:])] == v for k, v in a.items() if k.parts[:2] == ("task", "Train"))
    task_photos = {v for k, v in a.items() if k.parts[0] == "task"}
    assert not task_photos & {v for k, v in a.items() if k.parts[:2] == ("holdout", "Validation")}


def test_the_cnn_learns_it_above_chance(tmp_path):
    task, _ = make_objects(tmp_path, classes=6, train=60, val=20, test=0, size=32, seed=0)
    config = {"data": str(task), "model": "cnn", "weights": "none", "image_size": 16, "batch_size": 32,
              "epochs": 5, "lr": 3e-3, "seed": 0, "cache_dir": str(tmp_path / "cache")}
    result = train.run(config, tmp_path / "run", log=lambda *_: None, device=torch.device("cpu"))
    # chance is 1/6 = 0.17; 0.3 of 120 validation photos is 3.9 binomial sd above it
    assert result["best_val_acc"] >= 0.3
