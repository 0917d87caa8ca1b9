"""What keeps a search cheap at scale, and stays exact: a worker lists an unchanged data folder once (and never
serves a stale listing), and a frozen trial's checkpoint holds only what trains plus the prefix's identity."""
import os
import time

import numpy as np
import pytest
import torch
import torchvision

from conftest import draw, make_imagefolder
from dogs import cache, checkpoint, data
from dogs.engine import Run
from dogs.errors import CheckpointError


def age(root, seconds=60):
    """Every folder under root last changed `seconds` ago: older than the racy window of the listing memo."""
    past = time.time() - seconds
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, (past, past))


def test_listing_reused_until_a_folder_changes_and_a_file_changed_in_place_changes_the_image_key(tmp_path,
                                                                                                monkeypatch):
    root = make_imagefolder(tmp_path / "data", n_train=3, n_val=1, n_test=0, awkward=False)
    age(root)
    calls = []
    list_split = data._list_split
    monkeypatch.setattr(data, "_list_split", lambda *a: calls.append(a[1]) or list_split(*a))

    classes, files, labels = data.labeled_split(root, "Train")
    assert data.labeled_split(root, "Train") == (classes, files, labels) and calls == ["Train"]   # listed once
    key = cache.image_key(files, 16)

    # a file changed in place: the same listing, served from memory, and another image cache key
    time.sleep(0.01)
    draw("circle", np.random.default_rng(5)).save(files[0], format="PNG")
    assert data.labeled_split(root, "Train")[1] == files and calls == ["Train"]
    assert cache.image_key(files, 16) != key

    # a file added, a file removed, a class folder added: each is listed at once
    new = root / "Train" / "square" / "new.png"
    draw("square", np.random.default_rng(6)).save(new)
    assert new in data.labeled_split(root, "Train")[1]
    age(root)
    new.unlink()
    assert new not in data.labeled_split(root, "Train")[1]
    age(root)
    (root / "Train" / "star").mkdir()
    draw("circle", np.random.default_rng(7)).save(root / "Train" / "star" / "a.png")
    assert "star" in data.labeled_split(root, "Train")[0]


FROZEN = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 16, "epochs": 2, "head_width": 32,
          "seed": 0}


@pytest.fixture(scope="module")
def frozen_run(tiny_imagefolder, tmp_path_factory):
    """A frozen ResNet18 run of 2 epochs on cached features, its slim checkpoint after epoch 1, and the logits."""
    folder = tmp_path_factory.mktemp("frozen")
    run = Run({**FROZEN, "data": str(tiny_imagefolder)}, device=torch.device("cpu"), log_fn=lambda m: None)
    epochs = run.epochs()
    next(epochs)
    path = checkpoint.save(run.state(), folder / checkpoint.FILENAME)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = run.model.eval()(x)
    return run, path, x, logits, epochs


def test_frozen_checkpoint_holds_the_tail_and_the_prefix_identity_and_predicts_on_its_own(frozen_run):
    run, path, x, logits, _ = frozen_run
    full = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    assert path.stat().st_size < 0.05 * full and path.stat().st_size < 2e6      # 45 MB of ResNet18 left out
    ckpt = checkpoint.read(path)
    assert ckpt["frozen"]["model"] == "resnet18" and len(ckpt["frozen"]["hash"]) == 24
    assert not any(k.startswith("frozen.") for k in ckpt["model"])
    model, _ = checkpoint.load(path)
    with torch.no_grad():
        assert torch.allclose(model(x), logits, atol=1e-5)


def test_frozen_checkpoint_resumes_like_a_straight_run(frozen_run, tiny_imagefolder):
    run, path, _, _, epochs = frozen_run
    straight = next(epochs)
    resumed = Run({**FROZEN, "data": str(tiny_imagefolder)}, device=torch.device("cpu"),
                  resume=checkpoint.read(path), log_fn=lambda m: None)
    again = next(resumed.epochs())
    assert again["epoch"] == 2 and again["val_loss"] == pytest.approx(straight["val_loss"], rel=1e-5)


def test_a_frozen_prefix_that_is_gone_or_changed_is_one_checkpoint_error(tiny_imagefolder, tmp_path):
    weights = tmp_path / "backbone.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    config = {**FROZEN, "weights": str(weights), "epochs": 1, "data": str(tiny_imagefolder)}
    run = Run(config, device=torch.device("cpu"), log_fn=lambda m: None)
    next(run.epochs())
    path = checkpoint.save(run.state(), tmp_path / "ckpt" / checkpoint.FILENAME)
    checkpoint.load(path)   # the weights file is where it was: fine

    torch.manual_seed(2)
    torch.save(torchvision.models.resnet18().state_dict(), weights)   # other weights under the same name
    with pytest.raises(CheckpointError, match="not the one it was trained with") as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="the checkpoint"):
        Run(config, device=torch.device("cpu"), resume=checkpoint.read(path), log_fn=lambda m: None)

    weights.unlink()
    with pytest.raises(CheckpointError, match="cannot be found") as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value)


def test_a_local_search_runs_a_trial_per_slot_from_the_first_trials(tiny_imagefolder, tmp_path):
    # trials far shorter than a worker's start: Tune used to hand every trial to the first worker up
    from conftest import run_main
    from tune import experiment, report, search

    from dogs.config import resolve
    from dogs.splits import load_splits

    load_splits(resolve({"data": str(tiny_imagefolder), "image_size": 8}), log_fn=None)   # decoded before: short trials
    space = tmp_path / "space.yaml"
    space.write_text("search: {samples: 6, epochs: 1, grace_period: 1, seed: 0}\n"
                     "params: {model: cnn, image_size: 8, batch_size: 64, lr: {loguniform: [1.0e-3, 1.0e-2]}}\n")
    cpus = os.cpu_count()
    code, out, err = run_main(search, ["--space", str(space), "--data", str(tiny_imagefolder), "--storage",
                                       str(tmp_path / "runs"), "--name", "slots", "--cpus-per-trial", str(cpus / 2)])
    assert code == 0, err
    trials = experiment.read_trials(tmp_path / "runs" / "slots")
    assert len(trials) == 6 and len({t.last["pid"] for t in trials}) == 2   # both slots' workers ran trials
    mean, most, _ = report.observed_concurrency(trials)
    assert most == 2 and "at most 2, in 2 slot(s)" in out


def test_a_resumed_search_reports_its_own_session_time_and_concurrency():
    from tune import report
    from tune.experiment import Trial

    def epochs(*ends):   # one result per epoch of 2 s, reported at each end
        return [{"epoch": i + 1, "time_this_iter_s": 2.0, "reported_at": end} for i, end in enumerate(ends)]

    # before the resume: a alone (epochs 1-2); after it (since 150): a and b at once, 2 epochs each
    a = Trial("a", "a", {}, epochs(102, 104, 202, 204))
    b = Trial("b", "b", {}, epochs(202, 204))
    mean, most, own = report.observed_concurrency([a, b], since=150)
    assert (mean, most, own) == (2.0, 2, 8.0)
    mean, most, own = report.observed_concurrency([a, b])   # the whole experiment: a's span covers the gap
    assert most == 2 and own == 12.0 and mean == pytest.approx(12.0 / 104)
