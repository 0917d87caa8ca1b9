"""The command kit every command uses (dogs.train, tune.search, tune.best, tune.serve): one parser class (argparse's,
with groups, examples, 'did you mean' for a mistyped flag, which Python 3.11's argparse does not say, and a mistake
said in one line), `number`, the type of every numeric flag (finite, in its range), one `fail` that prints a user
error as `prog: error: message`, and the quiet end of a command whose reader left (`| head`)."""
import argparse
import difflib
import functools
import math
import os
import signal
import sys

from dogs.config import Range


def number(kind=float, low=-math.inf, high=math.inf, low_open=False):
    """An argparse type: a finite int or float in low..high (low_open: above low). nan, inf, a value out of the
    range or not a number is argparse's one line, `argument --flag: 'inf' is not a finite number; allowed: ...`."""
    span = Range(low, high, low_open)
    words = f"{'an integer' if kind is int else 'a number'}{'' if span == Range() else f' {span}'}"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}; "
                                             f"allowed: {words}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; allowed: {words}")
        if value not in span:
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: {words}")
        return value

    parse.__name__ = kind.__name__   # argparse's own messages name the type
    parse.kind, parse.span = kind, span
    return parse


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser with --help's `groups` (name -> argparse group, in `.groups`), an `examples` epilog
    printed as written, and an unrecognized-flag error that names the closest known flag."""

    def __init__(self, *args, examples=None, groups=(), **kwargs):
        if examples is not None:
            kwargs.update(epilog="examples:\n" + examples.rstrip(),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.groups = {name: self.add_argument_group(name) for name in groups}

    def parse_args(self, args=None, namespace=None):
        args, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}{self.suggestion(unknown)}")
        return args

    def error(self, message):
        """`prog: error: message`, one line, exit 2 (argparse also prints the usage: --help has it)."""
        fail(self.prog, message)

    def suggestion(self, unknown):
        """' (did you mean --epochs?)' for the first unknown flag close to a known one, else ''."""
        flags = [flag for action in self._actions for flag in action.option_strings if flag.startswith("--")]
        for arg in unknown:
            if arg.startswith("--"):
                close = difflib.get_close_matches(arg.split("=", 1)[0], flags, n=1)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""


def fail(prog, message):
    """Exit with `prog: error: message` and no traceback (each command's main, once)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def quiet_when_reader_leaves(main):
    """`main`, ending quietly when whatever reads its output closed it (`... | head`): no BrokenPipeError traceback,
    exit status 141 (128 + SIGPIPE), as `yes | head` ends."""
    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            try:
                return main(argv)
            finally:
                sys.stdout.flush()   # what is still buffered fails here, not in Python's own flush at exit
        except BrokenPipeError:
            try:   # nothing more reaches the closed pipe: Python's flush at exit would print the error again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):   # stdout is no file (a test's StringIO)
                pass
            return 128 + signal.SIGPIPE
    return wrapped
