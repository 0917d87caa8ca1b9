"""One typed config schema (dogs/config.py): every bad value is refused before anything runs, in one line
naming the key, the value and what is allowed; every command and the README ask the same schema."""
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_main
from dogs import config, train
from dogs.config import SCHEMA, ConfigError, check_value, parse_sets, resolve

ROOT = Path(__file__).resolve().parent.parent

# the cases (and their neighbours): key, value
BAD_VALUES = [
    ("lr", -1), ("lr", 0), ("backbone_lr", 0), ("backbone_lr", -1e-4), ("batch_size", 0),
    ("image_size", -5), ("image_size", 0), ("image_size", 4), ("dropout", 1.5), ("dropout", 1.0),
    ("head_width", -3), ("normalize", "weird"), ("precision", "fp64"), ("precision", "fp16"), ("epochs", 0),
    ("seed", "abc"), ("seed", -1), ("seed", 1.5), ("weight_decay", -0.1), ("label_smoothing", 1.0),
    ("label_smoothing", -0.1), ("unfreeze", 5), ("unfreeze", -1), ("model", "vgg"), ("head_on", "pixels"),
    ("metric", "best_val_acc"), ("mode", "maximise"), ("data", 3),
    # bool is not an int, an int is not a bool, a float is not an int
    ("batch_size", True), ("augment", 1), ("batch_size", 3.5),
]


@pytest.mark.parametrize("key, value", BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_bad_value_is_refused_naming_key_value_and_what_is_allowed(key, value):
    with pytest.raises(ConfigError) as info:
        resolve({key: value})
    message = str(info.value)
    assert message.startswith(f"{key}: {value!r} ") and "allowed: " in message, message


NUMERIC = [key for key, spec in SCHEMA.items() if config.value_type(spec) in (int, float)]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("key", NUMERIC)
def test_inf_and_nan_are_refused_for_every_number(key, value):
    with pytest.raises(ConfigError, match=f"^{key}: .*(not a finite number|wrong type)"):
        resolve({key: value})


def test_defaults_and_tiny_test_sizes_are_allowed():
    assert resolve() == {**config.DEFAULTS, "mode": "max"}  # mode null = the default metric's own
    assert resolve({"image_size": 8, "seed": None, "head_width": 0, "dropout": 0, "unfreeze": 4, "lr": 1})
    assert resolve({"image_size": 16, "metric": "val_loss", "mode": "min", "precision": "bf16"})


def test_unknown_key_lists_the_known_keys():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['learning_rate'\]; known keys: .*'lr'"):
        resolve({"learning_rate": 1})


def test_mode_defaults_to_the_metrics_own_direction():
    assert resolve({"metric": "val_loss"})["mode"] == "min"
    assert resolve({})["mode"] == "max"


def test_metric_and_mode_that_would_pick_the_worst_epoch_are_refused():
    with pytest.raises(ConfigError, match="mode 'max' with metric 'val_loss' would pick the worst epoch"):
        resolve({"metric": "val_loss", "mode": "max"})
    with pytest.raises(ConfigError, match="mode 'min' for|mode 'max' for"):
        resolve({"metric": "train_acc", "mode": "min"})


def test_set_values_are_checked_by_the_schema():
    assert parse_sets(["lr=3e-4", "model=cnn", "seed=none", "augment=true"]) == {
        "lr": 3e-4, "model": "cnn", "seed": None, "augment": True}
    with pytest.raises(ConfigError, match="^lr: 'abc' has the wrong type; allowed: a number > 0"):
        parse_sets(["lr=abc"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_sets(["lr"])


def test_amp_dtype_maps_exactly_the_allowed_precisions():
    import torch

    from dogs.device import amp_dtype

    cpu = torch.device("cpu")
    assert {p: amp_dtype({"precision": p}, cpu) for p in SCHEMA["precision"].allowed} == {
        "auto": None, "bf16": torch.bfloat16, "fp32": None}
    with pytest.raises(KeyError):   # not "anything else becomes bf16"
        amp_dtype({"precision": "fp16"}, cpu)


def test_normalization_covers_every_allowed_normalize():
    from dogs.models import HALF_MEAN, IMAGENET_MEAN, normalization

    means = {(n, m): normalization({"normalize": n, "model": m})[0]
             for n in SCHEMA["normalize"].allowed for m in ("cnn", "resnet18")}
    assert means[("auto", "cnn")] == HALF_MEAN and means[("auto", "resnet18")] == IMAGENET_MEAN
    assert means[("imagenet", "cnn")] == IMAGENET_MEAN and means[("half", "resnet18")] == HALF_MEAN


# dogs.train: --set accumulates, every bad value is one line


def test_train_set_accumulates_across_repeated_flags():
    args = train.get_args_parser().parse_args(["--set", "model=cnn", "--set", "epochs=2", "lr=3e-4"])
    assert args.set == ["model=cnn", "epochs=2", "lr=3e-4"]


BAD_SETS = [["lr=abc"], ["lr=-1"], ["batch_size=0"], ["precision=fp16"], ["seed=abc"], ["normalize=weird"],
            ["image_size=-5"], ["lr"], ["learning_rate=1"], ["model=cnn", "epochs=0"]]


@pytest.mark.parametrize("pairs", BAD_SETS, ids=[" ".join(p) for p in BAD_SETS])
def test_train_bad_set_is_one_line_naming_key_value_and_allowed(pairs, tmp_path):
    code, out, err = run_main(train, ["--set", *pairs, "--out", str(tmp_path)])
    key, _, value = pairs[-1].partition("=")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("dogs-train: error: ") and key in err and value in err and "Traceback" not in err
    assert "allowed" in err or "known keys" in err or "key=value" in err
    assert not any(tmp_path.iterdir())   # nothing ran


def test_train_bad_value_in_config_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: cnn\nlr: -1\n")
    code, _, err = run_main(train, ["--config", str(path)])
    assert code == 2 and err.strip() == (f"dogs-train: error: --config {path}: lr: -1 is not allowed; "
                                         f"allowed: a number > 0 ({SCHEMA['lr'].help})")



CONFIG_FILES = {  # what a config file holds -> its one-line error
    "lr: 0.1\nmodel: cnn\nlr: 0.001\n": "line 3, column 1: the key 'lr' is given twice (lines 1 and 3); keep one",
    '{"lr": 0.1, "lr": 0.2}': "the key 'lr' is given twice (lines 1 and 1)",
    "lr: 0.1\n  bad: [\n": "not valid YAML: line 2, column 6: mapping values are not allowed here",
    b"\xfflr: 0.1\n": "not UTF-8 text (invalid start byte at byte 0); save it as UTF-8",
}


@pytest.mark.parametrize("content, expected", CONFIG_FILES.items(), ids=["yaml twice", "json twice", "bad yaml", "latin-1"])
def test_train_config_file_with_a_key_twice_or_unreadable_is_one_line(content, expected, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = run_main(train, ["--config", str(path), "--data", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"--config {path}: " in err and expected in err, err


def test_space_file_with_a_key_given_twice_is_refused_not_the_last_one_silently_kept(tmp_path):
    from tune import spaces

    path = tmp_path / "space.yaml"  # was: the searched lr range silently replaced by the fixed lr: 0.1
    path.write_text("params:\n  lr: {loguniform: [1e-4, 1e-2]}\n  model: cnn\n  lr: 0.1\n")
    with pytest.raises(spaces.SpaceError, match="the key 'lr' is given twice \\(lines 2 and 4\\)"):
        spaces.load(path)

def test_train_data_given_twice_and_different_is_refused(tmp_path):
    code, _, err = run_main(train, ["--data", str(tmp_path / "a"), "--set", f"data={tmp_path / 'b'}"])
    assert code == 2 and "--data" in err and "differ" in err and len(err.strip().splitlines()) == 1


def test_train_data_from_set_or_config_is_honoured_without_data_flag(tmp_path):
    assert train.data_option({"data": "x", "lr": 1.0}, None) == {"data": "x", "lr": 1.0}
    assert train.data_option({"lr": 1.0}, "d") == {"lr": 1.0, "data": "d"}
    assert train.data_option({"data": str(tmp_path)}, str(tmp_path / ".")) == {"data": str(tmp_path / ".")}


# tune.search: --set accumulates too, bad ones are one line


def test_search_set_accumulates_across_repeated_flags():
    from tune import spaces

    args = spaces.get_args_parser().parse_args(["--set", "model=cnn", "--set", "epochs=2", "lr=3e-4"])
    assert args.set == ["model=cnn", "epochs=2", "lr=3e-4"]


@pytest.mark.parametrize("pair, expected", [
    ("lr=abc", "lr: 'abc' has the wrong type; allowed: a number > 0"),
    ("data=/elsewhere", "--set data: not a value to fix here; give the data folder with --data DIR"),
    ("metric=val_loss", "--set metric: not a value to fix here; set search.metric instead"),
], ids=["lr=abc", "data", "metric"])
def test_search_bad_set_is_one_line(pair, expected, tmp_path, tiny_imagefolder):
    from tune import search

    space = tmp_path / "space.yaml"
    space.write_text("params: {lr: {loguniform: [1e-4, 1e-2]}}\n")
    code, _, err = run_main(search, ["--space", str(space), "--data", str(tiny_imagefolder), "--storage",
                                     str(tmp_path / "runs"), "--set", "model=cnn", pair])
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err


# the README's options table lists exactly the schema's keys


def test_readme_options_table_lists_exactly_the_schema_keys():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Options"):]
    section = section[:section.index("\n## ", 1)]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    keys = [re.fullmatch(r"`(\w+)`", row.split("|")[1].strip()).group(1) for row in rows]
    assert sorted(keys) == sorted(SCHEMA) and len(keys) == len(set(keys))


# validating a space never imports torch


def test_config_and_space_validation_do_not_import_torch(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("params: {model: cnn, lr: {loguniform: [1e-4, 1e-2]}}\n")
    code = ("import sys, dogs, dogs.config, tune.spaces\n"
            f"tune.spaces.load({str(space)!r}, sets={{'batch_size': 8}}, data=None)\n"
            "dogs.config.resolve({'lr': 0.1})\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_mistyped_key_or_flag_names_the_closest_known_one(tmp_path):
    """--set / config / space keys (dogs.config.did_you_mean) and the three commands' flags (dogs.cli)."""
    import contextlib
    import io

    from dogs import train
    from dogs.config import parse_sets, resolve
    from dogs.errors import ConfigError, SpaceError
    from tune import best, spaces

    with pytest.raises(ConfigError, match=r"unknown config key 'lrr' \(given 0.1\) \(did you mean 'lr'\?\)"):
        parse_sets(["lrr=0.1"])
    with pytest.raises(ConfigError, match=r"\['bach_size'\] \(did you mean 'batch_size'\?\)"):
        resolve({"bach_size": 8})
    with pytest.raises(ConfigError) as far:
        parse_sets(["zzzz=1"])
    assert "did you mean" not in str(far.value)   # nothing close: no guess
    space = tmp_path / "space.yaml"
    space.write_text("search: {sampels: 4}\nparams: {lr: {loguniform: [1e-4, 1e-2]}}\n")
    with pytest.raises(SpaceError, match=r"search.sampels: unknown setting \(did you mean 'samples'\?\)"):
        spaces.load(space)
    space.write_text("params: {learning_rate: 0.1, lr: {loguniform: [1e-4, 1e-2]}}\n")
    with pytest.raises(SpaceError, match=r"params.learning_rate: unknown config key"):
        spaces.load(space)
    for parser, argv, hint in ((train.get_args_parser(), ["--confg", "x.yaml"], "--config"),
                               (spaces.get_args_parser(), ["--epochz", "3"], "--epochs"),
                               (best.get_args_parser(), ["--submitt"], "--submit")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert err.getvalue().splitlines()[-1].endswith(f"unrecognized arguments: {' '.join(argv)} "
                                                        f"(did you mean {hint}?)")


def test_help_is_grouped_with_examples():
    """The three commands' --help: groups of flags (the generated search-setting flags in theirs) and examples."""
    import re

    from dogs import train
    from tune import best, spaces

    def group_of(text):   # {flag: the heading of its group}
        heading, out = None, {}
        for line in text.splitlines():
            if re.fullmatch(r"[a-z]+:", line):
                heading = line[:-1]
            for flag in re.findall(r"^  (--[a-z-]+)", line):
                out[flag] = heading
        return out

    for parser, expected in ((train.get_args_parser(), {"--data": "data", "--set": "config", "--out": "output"}),
                             (spaces.get_args_parser(), {"--data": "data", "--samples": "search", "--space": "search",
                                                      "--cpus-per-trial": "resources", "--log": "output"}),
                             (best.get_args_parser(), {"--experiment": "experiment", "--submit": "output"})):
        text = parser.format_help()
        groups = group_of(text)
        assert {flag: groups.get(flag) for flag in expected} == expected
        assert "\nexamples:\n" in text and f"python -m {parser.prog.split()[-1].replace('dogs-', 'tune.')}" in text
