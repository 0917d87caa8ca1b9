"""Every numeric flag of every command refuses nan, inf and values out of its range in one line, before anything
runs (was: tune.serve took --max-upload-mb inf, --gpus-per-replica inf, --cpus-per-replica nan, --batch-wait-ms nan).
tune.serve's and tune.best's flags are typed by dogs.cli.number; tune.search's are its settings, checked by their
schema entry (tune.settings) before Ray starts."""
import contextlib
import io
import math

import pytest
from hypothesis import given, strategies as st

from dogs import train
from dogs.config import problem
from dogs.errors import SpaceError
from tune import best, spaces, serve, settings

PARSERS = {"dogs-serve": serve.get_args_parser, "dogs-best": best.get_args_parser,
           "python -m dogs.train": train.get_args_parser, "dogs-search": spaces.get_args_parser}
AWKWARD = ["nan", "NaN", "-nan", "inf", "-inf", "+Infinity", "1e999", "-1e999", "", "1,5", "0x10"]
VALUES = st.one_of(st.sampled_from(AWKWARD), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.integers(-10**6, 10**6).map(str), st.floats(-1e6, 1e6).map(lambda x: f"{x:g}"))


def numeric_flags(name):
    """(flag, action) of each flag of the command whose value is a number."""
    parser = PARSERS[name]()
    return [(action.option_strings[-1], action) for action in parser._actions
            if action.option_strings and (getattr(action.type, "kind", None) or action.type in (int, float))]


def parse(name, argv):
    """(namespace or None, stderr) of the command's parser."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return PARSERS[name]().parse_args(argv), err.getvalue()
        except SystemExit as stop:
            assert stop.code == 2
            return None, err.getvalue()


def test_serve_and_best_numeric_flags_all_go_through_the_shared_type():
    """No bare type=float/int left: a new flag gets nan/inf refused only if it uses dogs.cli.number."""
    for name in ("dogs-serve", "dogs-best", "python -m dogs.train"):
        bare = [flag for flag, action in numeric_flags(name) if action.type in (int, float)]
        assert not bare, f"{name}: {bare} are typed int/float: use dogs.cli.number(kind, low, ...)"
    flags = {flag for flag, _ in numeric_flags("dogs-serve")}
    assert {"--max-upload-mb", "--gpus-per-replica", "--cpus-per-replica", "--batch-wait-ms"} <= flags


@pytest.mark.parametrize("name", ["dogs-serve", "dogs-best"])
@given(data=st.data(), text=VALUES)
def test_a_typed_flag_takes_a_finite_value_in_its_range_or_refuses_in_one_line(name, data, text):
    flag, action = data.draw(st.sampled_from(numeric_flags(name)))
    args, err = parse(name, [f"{flag}={text}"])
    if args is None:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{name}: error: argument {flag}: "), err
        assert "allowed: " in lines[0]
        return
    value = getattr(args, action.dest)
    assert math.isfinite(value) and value in action.type.span and type(value) is action.type.kind


@pytest.mark.parametrize("flag, text", [("--max-upload-mb", "inf"), ("--gpus-per-replica", "inf"),
                                        ("--cpus-per-replica", "nan"), ("--batch-wait-ms", "nan"),
                                        ("--batch-wait-ms", "1e9"), ("--cpus-per-replica", "-1")])
def test_the_reported_serve_values_are_refused(flag, text):
    args, err = parse("dogs-serve", [flag, text])
    assert args is None and err.count("\n") == 1 and f"argument {flag}: " in err, err


@given(data=st.data(), text=VALUES)
def test_a_search_setting_flag_is_refused_in_one_line_unless_its_schema_allows_it(data, text):
    """tune.search's flags are the search settings: argparse takes the number, the setting's Key judges it."""
    flag, action = data.draw(st.sampled_from(numeric_flags("dogs-search")))
    args, err = parse("dogs-search", ["--space", "cnn_scratch.yaml", f"{flag}={text}"])
    if args is None:
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"dogs-search: error: argument {flag}: "), err
        return
    key = action.dest
    value = spaces.settings_from_args(args)[key]
    try:
        spaces.space_from_args(args, None)
    except SpaceError as refused:   # this setting, or one that depends on it (grace_period > epochs)
        assert key in str(refused) and "\n" not in str(refused), str(refused)
        return
    assert math.isfinite(value) and problem(settings.SETTINGS[key], value) is None
