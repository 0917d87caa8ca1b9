"""The progress bar of a one-off build (the decoded-image cache, the frozen features): tqdm's on the console of
dogs.train; in a search's trial Ray's tqdm_ray (set by dogs.trial), which draws it on the search's console
without Ray's per-line prefix."""

import contextlib

make = None   # a tqdm-like class (update, close) instead of tqdm's own (drawn_by)


@contextlib.contextmanager
def drawn_by(bar_class):
    """Bars made by `bar_class` within (dogs.trial: Ray's tqdm_ray.tqdm, for the length of a trial)."""
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
