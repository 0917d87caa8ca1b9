"""A model that learnt nothing is named (dogs.baseline): the two rules against an independent computation, and
report/ of a model that answers one class vs one that learnt (never a false alarm on the latter)."""
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from dogs import baseline, submission
from dogs.train import run

CPU = torch.device("cpu")


def wilson_low(k, n, z=1.959963984540054):
    """Wilson's lower bound, written out here (not dogs.uncertainty's)."""
    p = k / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


@given(st.lists(st.integers(0, 4), min_size=1, max_size=300), st.data())
def test_the_validation_rule_warns_exactly_when_the_interval_reaches_the_largest_class(labels, data):
    n = data.draw(st.integers(1, 400))
    k = data.draw(st.integers(0, n))
    share = np.bincount(labels).max() / len(labels)
    line = baseline.below_majority(k / n, n, labels, [f"c{i}" for i in range(5)])
    low = 0.0 if k == 0 else wilson_low(k, n)
    if abs(low - share) > 1e-9:   # at the boundary itself rounding decides
        assert (line is not None) == (low <= share), (k, n, share, low, line)
    if line is not None:
        assert line.count("\n") == 0 and f"val_acc {k / n:.4f}" in line and f"{share:.4f} of Validation" in line
        assert f"'c{np.bincount(labels).argmax()}'" in line   # the largest class by name (of equal ones the first)


def test_the_validation_rule_says_nothing_without_a_size_or_labels():
    assert baseline.below_majority(0.2, None, [0, 1, 1]) is None
    assert baseline.below_majority(0.2, 10, []) is None
    assert baseline.below_majority(float("nan"), 10, [0, 1]) is None


@given(st.lists(st.integers(0, 3), max_size=200), st.integers(1, 4))
def test_the_test_rule_warns_exactly_at_ninety_percent_of_one_class_and_states_its_rule(predicted, n_classes):
    classes = [f"class{i}" for i in range(max(n_classes, max(predicted, default=0) + 1))]
    line = baseline.one_class(predicted, classes)
    expected = len(classes) > 1 and len(predicted) > 0 and np.bincount(predicted).max() >= 0.9 * len(predicted)
    assert (line is not None) == expected
    if line:
        top = np.bincount(predicted).argmax()
        assert f"answers 'class{top}'" in line and f"of the {len(predicted)} Test photos" in line
        assert f"(the rule: >= 90% one class of {len(classes)})" in line and "\n" not in line


def one_class_model(model, answer):
    """The model made to answer class `answer` for every image: the last layer's weights 0, its bias one-hot."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.nn.functional.one_hot(torch.tensor(answer), last.out_features).float() * 10)
    return model


@pytest.fixture(scope="module")
def trained(tiny_imagefolder, tmp_path_factory):
    """A CNN that learnt the tiny folder's easy shapes: best.pt of dogs.train (8 epochs at 16 px)."""
    out = tmp_path_factory.mktemp("learnt")
    config = {"data": str(tiny_imagefolder), "model": "cnn", "image_size": 16, "batch_size": 16, "epochs": 8,
              "lr": 3e-3, "seed": 0}
    from dogs import checkpoint

    return checkpoint.load(run(config, out)["checkpoint"])


def test_a_model_that_learnt_gets_no_warning_in_the_console_or_report(trained, tmp_path):
    model, ckpt = trained
    lines = []
    written = submission.submit(model, ckpt, tmp_path, device=CPU, report=True, log_fn=lines.append)
    val_acc = float(next(line for line in lines if "val_acc" in line).split()[1])
    assert val_acc > 0.6, lines   # learnt: far above a third (3 balanced classes)
    assert not any("Warning" in line for line in lines), lines
    assert (written["report"] / "warnings.txt").read_text().startswith("none: single is above always answering")


def test_a_model_that_answers_one_class_is_named_once_in_the_console_and_in_report(trained, tmp_path):
    model, ckpt = trained
    model = one_class_model(model, 1)
    lines = []
    written = submission.submit(model, ckpt, tmp_path, device=CPU, report=True, log_fn=lines.append)
    warnings = [line.strip() for line in lines if "Warning" in line]
    square = ckpt["classes"][1]
    assert len(warnings) == 2, lines   # one line per rule, each once
    assert f"answers {square!r} for 100% of the 12 Test photos (the rule: >= 90% one class of 3)" in warnings[0]
    assert "val_acc 0.3333" in warnings[1] and "is not above always answering the largest class" in warnings[1]
    assert (written["report"] / "warnings.txt").read_text().splitlines() == warnings


def test_the_search_summary_names_a_best_trial_that_learnt_nothing(tiny_imagefolder, tmp_path):
    """One trial of one epoch at lr 1e-9: its weights barely move from their random start, and its val_acc on the 24
    balanced images cannot be told apart from answering the largest class (a third): the summary says so once."""
    from conftest import run_main
    from tune import search

    (tmp_path / "space.yaml").write_text("search: {samples: 1, epochs: 1, grace_period: 1, seed: 0}\n"
                                         "params: {model: cnn, image_size: 16, batch_size: 16, lr: 1.0e-9}\n")
    code, out, err = run_main(search, ["--space", str(tmp_path / "space.yaml"), "--data", str(tiny_imagefolder),
                                       "--storage", str(tmp_path / "runs"), "--name", "nothing"])
    assert code == 0, out[-3000:] + err[-3000:]
    [line] = [line for line in out.splitlines() if "Warning" in line]
    assert re.match(r"  Warning: the best trial, #0 \w+, may have learnt nothing: its val_acc [\d.]+ \(95% \[[\d.]+, "
                    r"[\d.]+\] on 24 images\) is not above always answering the largest class, 'circle' "
                    r"\(0\.3333 of Validation\)", line), line
