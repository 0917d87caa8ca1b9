"""dogs.uncertainty: how sure a score is; its interval in the summary, trials.csv and tune.best."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from dogs import uncertainty
from dogs.engine import confusion_of, macro_f1
from tune import best, search
from conftest import TWO_TRIAL_SPACE as SPACE, run_main


def test_wilson_matches_a_textbook_value_and_scipy():
    # Newcombe (1998), Table I: 81 of 263 -> Wilson 95% interval 0.2553 to 0.3662
    low, high = uncertainty.wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    # the case: half of 114 validation images right is about +-9 points
    low, high = uncertainty.wilson(57, 114)
    assert 0.08 < 0.5 - low < 0.10 and math.isclose(high - 0.5, 0.5 - low)


def test_wilson_agrees_with_scipy_for_every_count():
    # every k of small n, and random (k, n) up to 5000, the ends (0 and n) included
    rng = np.random.default_rng(0)
    cases = [(k, n) for n in range(1, 40) for k in range(n + 1)]
    cases += [(int(rng.integers(0, n + 1)), int(n)) for n in rng.integers(40, 5000, 200)] + [(0, 4999), (4999, 4999)]
    for k, n in cases:
        reference = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = uncertainty.wilson(k, n)
        assert math.isclose(low, reference.low, abs_tol=1e-9) and math.isclose(high, reference.high, abs_tol=1e-9), (k, n)
        assert low <= k / n <= high


def test_interval_by_metric():
    result = {"val_acc": 0.5, "val_images": 114, "val_loss": 1.2, "train_acc": 0.9, "train_images": 400,
              "val_macro_f1": 0.4, "val_macro_f1_low": 0.3, "val_macro_f1_high": 0.5}
    assert uncertainty.interval("val_acc", 0.5, result) == uncertainty.wilson(57, 114)
    assert uncertainty.interval("train_acc", 0.9, result) == uncertainty.wilson(360, 400)
    assert uncertainty.interval("val_loss", 1.2, result) is None   # a loss has none
    assert uncertainty.interval("val_macro_f1", 0.4, result) == (0.3, 0.5)
    assert uncertainty.interval("val_macro_f1", 0.45, result) is None   # another epoch's bounds: not these
    assert uncertainty.interval("val_acc", 0.5, {"val_acc": 0.5}) is None   # made before intervals
    assert uncertainty.interval("val_acc", float("nan"), result) is None


def test_macro_f1_bootstrap_brackets_the_score_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    widths = []
    for n in (60, 600):
        labels = rng.integers(0, 3, n)
        predictions = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 3, n))
        score = macro_f1(confusion_of(labels, predictions, 3))
        low, high = uncertainty.bootstrap(lambda rows: macro_f1(confusion_of(labels[rows], predictions[rows], 3)), n)
        assert low < score < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2   # ~ 1/sqrt(n): 10x the images, about a third of the width


@pytest.fixture(scope="module")
def searched(tiny_imagefolder, tmp_path_factory):
    """A finished 2-trial search."""
    folder = tmp_path_factory.mktemp("intervals")
    (folder / "space.yaml").write_text(SPACE)
    code, out, err = run_main(search, ["--space", str(folder / "space.yaml"), "--data", str(tiny_imagefolder),
                                       "--storage", str(folder / "runs"), "--name", "i"])
    assert code == 0, out[-3000:] + err[-3000:]
    return folder / "runs" / "i", out


def test_summary_trials_csv_and_best_show_the_interval(searched, tiny_imagefolder):
    exp_dir, out = searched
    table = pd.read_csv(exp_dir / "trials.csv", dtype={"trial_id": str})
    n = 3 * 8   # the tiny folder's validation images
    for row in table.itertuples():
        assert (row.best_val_acc_low, row.best_val_acc_high) == pytest.approx(
            uncertainty.wilson(round(row.best_val_acc * n), n))
    top = table.loc[table.best_val_acc.idxmax()]
    others = table[table.trial_id != top.trial_id].best_val_acc
    inside = int(((others >= top.best_val_acc_low) & (others <= top.best_val_acc_high)).sum())
    line = next(line for line in out.splitlines() if line.strip().startswith("interval"))
    assert f"[{top.best_val_acc_low:.4f}, {top.best_val_acc_high:.4f}]" in line
    assert f"{inside} other trial(s) within it" in line
    code, printed, err = run_main(best, ["--experiment", str(exp_dir)])
    assert code == 0, err
    assert f"95% [{top.best_val_acc_low:.4f}, {top.best_val_acc_high:.4f}]" in printed


def test_a_run_ranked_by_macro_f1_reports_its_bootstrap_interval(tiny_config, tmp_path):
    from dogs.train import run

    history = run({**tiny_config, "epochs": 1, "metric": "val_macro_f1"}, tmp_path, log=lambda *_: None)["history"]
    m = history[-1]
    assert m["val_macro_f1_low"] <= m["val_macro_f1"] <= m["val_macro_f1_high"] and m["val_images"] == 24
    assert uncertainty.interval("val_macro_f1", m["val_macro_f1"], m) == (m["val_macro_f1_low"], m["val_macro_f1_high"])
    plain = run({**tiny_config, "epochs": 1}, tmp_path / "acc", log=lambda *_: None)["history"][-1]
    assert "val_macro_f1_low" not in plain   # computed only when it ranks


def test_progress_line_shows_the_best_score_interval():
    from types import SimpleNamespace

    from tune.progress import ProgressCallback

    trial = SimpleNamespace(trial_id="a", status="RUNNING",
                            last_result={"training_iteration": 1, "best_val_acc": 0.5, "val_images": 114})
    low, high = uncertainty.wilson(57, 114)
    assert f"best best_val_acc 0.5000 [{low:.2f}, {high:.2f}] (a)" in ProgressCallback(4, 3, "val_acc", "max").line(
        [trial], elapsed=1)
