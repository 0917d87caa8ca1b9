"""How sure a score is: a 95% interval from the size of the set it was measured on.

An accuracy (val_acc, val_top5, train_acc) is a proportion of n images: its interval is Wilson's score
interval for k = round(score * n) successes of n (the epoch reports n as val_images / train_images).
Macro-F1 is not a proportion: its interval is a percentile bootstrap over the validation predictions of the
epoch, computed by the trainable (it reports val_macro_f1_low / val_macro_f1_high). A loss has none here:
its spread depends on the per-image losses, which no epoch keeps.

The interval says how much the score could differ on another validation set of the same size drawn from the
same photos: two trials whose scores both lie within it are not told apart by this validation set.
"""
import math

import numpy as np

LEVEL = 0.95
Z = 1.959963984540054   # the standard normal's 97.5% quantile: a two-sided 95% interval
RESAMPLES = 1000        # bootstrap resamples of the validation predictions
COUNTS = {"val_acc": "val_images", "val_top5": "val_images", "train_acc": "train_images"}   # metric -> its n
BOOTSTRAPPED = ("val_macro_f1",)


def wilson(successes, n, z=Z):
    """Wilson's score interval (low, high) of a proportion: `successes` of `n` (Wilson 1927)."""
    if n <= 0:
        raise ValueError(f"wilson: n={n}, an interval needs at least one trial")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at 0 or n successes an end is exactly 0 or 1 (the formula leaves a rounding error there)
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def bootstrap(statistic, n, resamples=RESAMPLES, seed=0):
    """(low, high): the 2.5% and 97.5% percentiles of statistic(rows) over `resamples` resamples of the rows
    0..n-1 (with replacement; seeded: the same predictions give the same interval)."""
    rng = np.random.default_rng(seed)
    scores = [statistic(rng.integers(0, n, n)) for _ in range(resamples)]
    low, high = np.percentile(scores, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(low), float(high)


def interval(metric, value, result):
    """(low, high) of `value`, a score of `metric` measured in the epoch whose reported dict is `result`; None for
    a loss, a missing or non-finite value, or a result that lacks what the interval needs (an experiment made
    before intervals were reported)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    if metric in COUNTS:
        n = result.get(COUNTS[metric])
        return wilson(round(value * n), n) if isinstance(n, int) and n > 0 else None
    if metric in BOOTSTRAPPED and result.get(metric) == value:
        low, high = result.get(f"{metric}_low"), result.get(f"{metric}_high")
        return (low, high) if low is not None and high is not None else None
    return None


def has_interval(metric):
    """Whether scores of `metric` get an interval (accuracies and macro-F1; not losses)."""
    return metric in COUNTS or metric in BOOTSTRAPPED


def within(values, bounds):
    """How many of `values` lie within the interval `bounds` (ends included)."""
    low, high = bounds
    return sum(low <= v <= high for v in values)
