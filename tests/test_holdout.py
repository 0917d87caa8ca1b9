"""search.holdout: a stratified, seeded part of Validation that ranking never sees."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dogs.data import holdout_mask
from dogs.errors import DataError
from dogs.train import run
from tune import reevaluate, search, spaces
from tune.experiment import Experiment, Trial
from conftest import make_imagefolder, run_main


@settings(max_examples=200)
@given(counts=st.lists(st.integers(1, 60), min_size=1, max_size=7), fraction=st.floats(0.01, 0.9), seed=st.integers(0, 9))
def test_holdout_mask_is_stratified_seeded_and_keeps_every_class_on_both_sides_or_refuses(counts, fraction, seed):
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    names = [f"c{label}" for label in range(len(counts))]
    wanted = [max(1, round(fraction * count)) for count in counts]
    short = [label for label, count in enumerate(counts) if wanted[label] > count - 1]
    if short:   # was: silently fewer (0.9 of 2 images became 0.5): refused, naming each class and its count
        with pytest.raises(DataError) as refused:
            holdout_mask(labels, fraction, classes=names)
        message = str(refused.value)
        assert all(f"Validation/c{label} has {counts[label]} image(s)" in message for label in short), message
        assert not any(f"Validation/c{label} " in message for label in set(range(len(counts))) - set(short))
        if min(counts) >= 2:   # the largest fraction it names does fit
            most = float(message.split("use holdout at most ")[1].split(",")[0])
            assert holdout_mask(labels, most).any()
        return
    held = holdout_mask(labels, fraction, classes=names)
    assert np.array_equal(held, holdout_mask(labels, fraction))   # the same part every time
    for label, count in enumerate(counts):
        assert held[labels == label].sum() == wanted[label]   # exactly what was asked, rounded
    assert not holdout_mask([0, 0, 1], 0).any()


def test_a_holdout_that_cannot_be_kept_is_refused_naming_the_classes():
    with pytest.raises(DataError, match="Validation/b has 1 image"):
        holdout_mask([0, 0, 1], 0.3, classes=["a", "b"])
    with pytest.raises(DataError, match=r"holdout 0.9: Validation/a has 2 image\(s\), Validation/b has 2 image\(s\), "
                                        r"too few .* use holdout at most 0.5, holdout 0"):
        holdout_mask([0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2], 0.9, classes=["a", "b", "c"])


def test_a_run_reports_the_rest_as_val_and_the_part_as_holdout(tiny_config, tmp_path):
    out = run({**tiny_config, "epochs": 1, "holdout": 0.25}, tmp_path, log=lambda *_: None)
    metrics = out["history"][-1]
    assert metrics["val_images"] + metrics["holdout_images"] == 3 * 8
    assert metrics["holdout_images"] == 3 * 2   # round(0.25 x 8) per class
    assert {"holdout_acc", "holdout_loss", "holdout_top5", "holdout_macro_f1"} <= set(metrics)
    plain = run({**tiny_config, "epochs": 1}, tmp_path / "plain", log=lambda *_: None)["history"][-1]
    assert plain["val_images"] == 24 and "holdout_acc" not in plain


def test_holdout_settings_are_checked_before_anything_runs(tmp_path):
    base = "search: {samples: 2, epochs: 1, grace_period: 1%s}\nparams:\n  model: cnn\n  lr: {loguniform: [1e-3, 1e-2]}\n"
    for extra, message in [(", holdout: 0.95", "search.holdout: 0.95 is not allowed"),
                           (", holdout: 0.3, metric: train_acc", "search.holdout: 0.3 holds out part of Validation"),
                           (", holdout: yes", "search.holdout")]:
        (tmp_path / "s.yaml").write_text(base % extra)
        with pytest.raises(spaces.SpaceError, match=message):
            spaces.load(tmp_path / "s.yaml")
    (tmp_path / "p.yaml").write_text(base % "" + "  holdout: 0.3\n")
    with pytest.raises(spaces.SpaceError, match="set search.holdout instead"):
        spaces.load(tmp_path / "p.yaml")
    (tmp_path / "ok.yaml").write_text(base % ", holdout: 0.3")
    assert spaces.load(tmp_path / "ok.yaml")["search"]["holdout"] == 0.3
    # a class too small to split: one line, before Ray starts (no experiment folder)
    small = make_imagefolder(tmp_path / "small", n_train=4, n_val=1, n_test=0, awkward=False)
    code, out, err = run_main(search, ["--space", str(tmp_path / "ok.yaml"), "--data", str(small),
                                       "--storage", str(tmp_path / "runs")])
    assert code == 2 and err.startswith("dogs-search: error: search.holdout: holdout 0.3: Validation/circle has 1 "
                                        "image(s), Validation/square has 1 image(s)"), err
    assert "each class needs at least 2 validation images" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
    # --holdout 0.9 with 2 validation images per class (was: silently 0.5): refused before anything runs
    two = make_imagefolder(tmp_path / "two", n_train=4, n_val=2, n_test=0, awkward=False)
    code, out, err = run_main(search, ["--space", str(tmp_path / "ok.yaml"), "--data", str(two), "--holdout", "0.9",
                                       "--storage", str(tmp_path / "runs")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists(), err
    assert all(f"Validation/{name} has 2 image(s)" in err for name in ("circle", "square", "triangle")), err
    assert "use holdout at most 0.5" in err


def test_reevaluation_compares_configurations_on_the_held_out_part():
    def finished(val, held):
        return Trial("x", "p", {"run": ["t", 1], "epochs": 2},
                     results=[{"epoch": 1, "val_acc": val[0], "holdout_acc": held[0]},
                              {"epoch": 2, "val_acc": val[1], "holdout_acc": held[1], "done": True}])

    run = finished((0.9, 0.8), (0.5, 0.7))
    def searched(holdout):
        return Experiment("x", {"search": {"metric": "val_acc", "mode": "max", "holdout": holdout}}, [])

    assert reevaluate.run_score(searched(0), run) == 0.9
    assert reevaluate.run_score(searched(0.3), run) == 0.5   # at the best epoch by val_acc
    assert reevaluate.compared_on("val_macro_f1", 0.3) == "holdout_macro_f1"
