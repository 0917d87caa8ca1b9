"""The progress bar of a one-off build (the decoded-image cache, the frozen features): tqdm's on the console of
dogs.train; in a search's trial `Lines` (set by dogs.ray_trainable): plain lines that Ray forwards to the search's console
without its `(pid=...)` prefix (tune.ray_setup), as clean in a log file as on a terminal."""

import contextlib
import sys
import time

make = None   # a tqdm-like class (update, close) instead of tqdm's own (drawn_by)


@contextlib.contextmanager
def drawn_by(bar_class):
    """Bars made by `bar_class` within (dogs.ray_trainable: Lines, for the length of a trial)."""
    global make
    previous, make = make, bar_class
    try:
        yield
    finally:
        make = previous


def bar(total, desc, unit):
    """A progress bar of `total` steps."""
    if make is not None:
        return make(total=total, desc=desc, unit=unit)
    from tqdm.auto import tqdm

    # disable=None: drawn on a terminal only (no carriage-return lines in a log file or a captured output)
    return tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=1.0, disable=None)


class Lines:
    """A bar as whole lines, for output that is forwarded or written to a file (no carriage returns, no escape
    codes): `desc: done/total unit` at most every `every_s` seconds, and once when it closes, with its time."""

    def __init__(self, total, desc, unit, every_s=10.0, out=None):
        self.total, self.desc, self.unit, self.every_s, self.out = total, desc, unit, every_s, out or sys.stdout
        self.done, self.began = 0, time.monotonic()
        self.said = self.began

    def update(self, n=1):
        self.done += n
        if time.monotonic() - self.said >= self.every_s and self.done < self.total:
            self._say(f"{self.done}/{self.total} {self.unit}")

    def close(self):
        self._say(f"{self.done}/{self.total} {self.unit} in {time.monotonic() - self.began:.1f} s")

    def _say(self, text):
        self.said = time.monotonic()
        print(f"{self.desc}: {text}", file=self.out, flush=True)
