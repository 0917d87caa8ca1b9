"""The argparse parser every command uses: argparse's own, plus 'did you mean' for a mistyped flag
(Python 3.11's argparse says only 'unrecognized arguments')."""
import argparse
import difflib


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose unrecognized-flag error names the closest known flag."""

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
