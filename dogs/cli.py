"""The command kit every command uses (dogs.train, tune.search, tune.best, tune.serve): one parser class (argparse's,
with groups, examples, and 'did you mean' for a mistyped flag, which Python 3.11's argparse does not say) and one
`fail` that prints a user error as `prog: error: message`."""
import argparse
import difflib
import sys


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
