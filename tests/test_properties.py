"""Property-based tests (Hypothesis) for whole classes of input: --set strings and config values, search-space
files, class folder names. Examples per test: the "ci" profile of conftest.py (seconds);
HYPOTHESIS_PROFILE=thorough runs many more."""
import functools
import math
import os
import unicodedata

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from dogs import checkpoint, data, submission, train
from dogs.config import (DEFAULTS, SCHEMA, Range, absolute_path, natural_mode, nullable, parse_sets, resolve,
                         value_type)
from dogs.errors import UserError
from tune import spaces
from tune.space_values import define_by_run
from tune.settings import SAMPLERS
from conftest import CLASSES, draw

optuna.logging.set_verbosity(optuna.logging.WARNING)

# --- config values and --set strings: accepted and honoured, or one UserError line; never a traceback ---

numbers = st.one_of(st.integers(-10, 3000), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(-2, 2))
plain = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
values = st.one_of(plain, st.lists(plain, max_size=3), st.dictionaries(st.text(max_size=4), plain, max_size=2))


def valid_value(key):
    """Values the schema allows for `key` (and a few it does not, from its neighbours)."""
    spec = SCHEMA[key]
    kind = value_type(spec)
    if isinstance(spec.allowed, tuple):
        out = st.sampled_from(spec.allowed)
    elif kind is bool:
        out = st.booleans()
    elif kind is str:
        out = st.text(max_size=12)
    else:
        r = spec.allowed or Range()
        low, high = (max(r.low, -1e6), min(r.high, 1e6))
        out = (st.integers(math.ceil(low), math.floor(high)) if kind is int
               else st.floats(low, high, exclude_min=r.low_open, exclude_max=r.high_open))
    return st.one_of(out, st.none()) if nullable(spec) else out


config_values = st.sampled_from(sorted(SCHEMA)).flatmap(
    lambda key: st.tuples(st.just(key), st.one_of(valid_value(key), values)))


def text_of(value):
    """How a user would type `value` after key= on a command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def assert_honoured(given_values, resolved):
    """Every value given is the resolved one; a weights file or cache_dir made absolute, mode null = the metric's."""
    for key, value in given_values.items():
        if key in ("weights", "cache_dir"):
            assert resolved[key] == absolute_path(key, value)
        elif key == "mode" and value is None:
            assert resolved[key] == natural_mode(resolved["metric"])
        else:
            assert resolved[key] == value and type(resolved[key]) is type(value), key


@given(st.lists(config_values, max_size=4))
def test_a_config_is_accepted_and_honoured_or_one_user_error(pairs):
    config = dict(pairs)
    config.pop("data", None)
    try:
        resolved = resolve(config)
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert_honoured(config, resolved)


@given(st.lists(st.one_of(config_values.map(lambda kv: f"{kv[0]}={text_of(kv[1])}"), st.text(max_size=30)),
                max_size=4))
def test_set_strings_are_accepted_and_honoured_or_one_user_error(pairs):
    try:
        sets = parse_sets(pairs)
        sets.pop("data", None)
        resolved = resolve(sets)
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert_honoured(sets, resolved)


# --- search spaces: validate accepts exactly what sampling can run ---

SEARCHABLE = sorted(set(DEFAULTS) - set(spaces.NOT_IN_PARAMS))
bounds = st.lists(st.one_of(st.integers(-5, 600), st.floats(-2, 600, allow_nan=False), plain), min_size=0, max_size=4)


@st.composite
def valid_range(draw_, key):
    """A distribution over `key`'s allowed numbers (kind and bounds a space file could well have)."""
    spec = SCHEMA[key]
    r, integer = spec.allowed or Range(), value_type(spec) is int
    low, high = max(r.low, 1e-6 if r.low_open else r.low, -50), min(r.high, 600)
    kind = draw_(st.sampled_from(["int", "randint", "qrandint", "lograndint"] if integer
                                 else ["uniform", "quniform", "loguniform"]))
    cast = int if integer else float
    a, b = sorted(draw_(st.lists(st.integers(math.ceil(low), math.floor(high)) if integer else
                                 st.floats(low, high, exclude_max=r.high_open), min_size=2, max_size=2)))
    args = [cast(a), cast(b)] + ([draw_(st.integers(1, 5)) if integer else draw_(st.floats(0.001, 2))]
                                 if kind.startswith("q") else [])
    return {kind: args}


def param_entry(key):
    """A params entry for `key`: mostly what a space file would hold, sometimes anything."""
    numeric = value_type(SCHEMA[key]) in (int, float)
    searched = valid_range(key) if numeric else st.builds(lambda a: {"choice": a},
                                                          st.lists(valid_value(key), min_size=1, max_size=3))
    anything = st.one_of(
        plain,
        st.builds(lambda k, a: {k: a}, st.sampled_from(sorted(spaces.DISTRIBUTIONS)), bounds),
        st.builds(lambda a: {"choice": a}, st.lists(st.one_of(valid_value(key), plain), min_size=1, max_size=4)),
        st.builds(lambda v: {"value": v}, valid_value(key)),
        st.dictionaries(st.sampled_from(["choice", "uniform", "when", "oops"]), values, max_size=2),
    )
    return st.one_of(searched, searched, searched, valid_value(key), anything)


@st.composite
def space_files(draw_):
    keys = draw_(st.lists(st.sampled_from(SEARCHABLE), min_size=1, max_size=5, unique=True))
    params = {key: draw_(param_entry(key)) for key in keys}
    if len(keys) > 1 and draw_(st.booleans()):   # a condition on an earlier parameter
        first = keys[0]
        entry = params[keys[-1]]
        condition = {first: draw_(st.one_of(valid_value(first), st.lists(valid_value(first), max_size=2)))}
        params[keys[-1]] = {**entry, "when": condition} if isinstance(entry, dict) else {"value": entry, "when": condition}
    epochs = draw_(st.integers(1, 5))
    search = {"samples": draw_(st.integers(1, 20)), "epochs": epochs, "grace_period": draw_(st.integers(1, epochs)),
              "metric": draw_(st.sampled_from(["val_acc", "val_loss", "val_macro_f1", "train_loss"])),
              "sampler": draw_(st.sampled_from(SAMPLERS))}
    if draw_(st.integers(0, 3)) == 0:   # sometimes one setting off
        search.update(draw_(st.dictionaries(st.sampled_from(["samples", "epochs", "grace_period", "metric", "mode"]),
                                            st.one_of(st.integers(-1, 20), st.sampled_from(["val_top5", "max", "min"])),
                                            min_size=1, max_size=1)))
    return {"search": search, "params": params}


def sampled_configs(space, count, seed):
    """`count` trial configs as the search makes them: Optuna's define-by-run (tune.study_searcher) + the search's keys."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    s = space["search"]
    for _ in range(count):
        trial = study.ask()
        fixed = define_by_run(space["params"], trial)
        yield {**trial.params, **fixed, "epochs": s["epochs"], "metric": s["metric"], "mode": s["mode"]}


@given(space_files(), st.integers(0, 2**16))
def test_a_space_that_validates_samples_only_configs_that_resolve(raw, seed):
    try:
        space = spaces.validate(raw, "space.yaml", data=None)
    except UserError as err:
        assert "\n" not in str(err) and str(err).startswith(("space.yaml", "--set")), err
        return
    for config in sampled_configs(space, 5, seed):
        resolve(config)   # a trial of this space can start: no ConfigError in a worker


# --- class folder names: through training, the report and the submission unchanged ---

def usable_name(name):
    """A name a class folder can have on Linux that the layout does not skip (hidden, system) or refuse."""
    return (name not in (".", "..") and not data.is_skipped_folder(name) and len(name.encode()) <= 255
            and name == unicodedata.normalize("NFC", name))


class_names = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
                      min_size=1, max_size=80).filter(usable_name)


@settings(max_examples=int(os.environ.get("CLASS_NAME_EXAMPLES", 3)))
@given(st.lists(class_names, min_size=2, max_size=3, unique=True))
@example(names=["price_$5_$10", "back\\slash $x$", "50%_{x}^2"])   # mathtext crashed the grid (#17)
def test_class_folder_names_round_trip_through_training_the_report_and_the_submission(tmp_path_factory, names):
    root = tmp_path_factory.mktemp("names") / "data"
    rng = np.random.default_rng(0)
    for split, n in (("Train", 4), ("Validation", 2)):
        for i, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                draw(CLASSES[i % 3], rng, (20, 20)).save(root / split / name / f"{k}.png")
    (root / "Test").mkdir()
    draw(CLASSES[0], rng, (20, 20)).save(root / "Test" / "0.png")
    out = tmp_path_factory.mktemp("out")
    result = train.run({"data": str(root), "model": "cnn", "image_size": 8, "batch_size": 8, "epochs": 1,
                        "head_width": 8}, out, log=lambda *_: None, device=torch.device("cpu"))
    model, ckpt = checkpoint.load(result["checkpoint"])
    assert ckpt["classes"] == sorted(names)
    submission.submit(model, ckpt, out, device=torch.device("cpu"), report=True, log_fn=lambda *_: None)
    per_class = pd.read_csv(out / "report" / "per_class.csv", keep_default_na=False, dtype={"class": str})
    assert list(per_class["class"]) == sorted(names)
    assert pd.read_csv(out / "submission.csv")["Class"].between(0, len(names) - 1).all()
    assert (out / "predictions.png").stat().st_size and (out / "report" / "confusion.png").stat().st_size
