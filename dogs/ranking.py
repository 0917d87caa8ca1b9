"""Which score is best: the one rule every place that ranks epochs or trials asks (tests/test_ranking.py states it).

- mode "max": larger is better; "min": smaller is better.
- A missing or non-finite score (None, NaN, +-Infinity, a string, a bool: a diverged epoch) ranks below every
  finite one: it is never the best of a set that has a finite score.
- Of equal scores, the one given first wins (`ties="first"`: trials, in trial order) or the one given last
  (`ties="last"`: epochs, the later one, as Ray's checkpoint keeping keeps the later of equal checkpoints).
"""
import math


def finite(value):
    """Whether `value` is a score: a finite number (NaN, +-Infinity, a string or a bool are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def key(value, mode):
    """Sort key: larger is better; a missing or non-finite score is worst."""
    if not finite(value):
        return float("-inf")
    return value if mode == "max" else -value


def ranked(items, score, mode, ties="first"):
    """The items with a finite score(item), best first; of equal scores the first given first (ties="first")
    or the last given first (ties="last")."""
    items = list(items) if ties == "first" else list(items)[::-1]
    return sorted((item for item in items if finite(score(item))), key=lambda item: key(score(item), mode),
                  reverse=True)   # a stable sort: equal scores keep the order given


def best(items, score, mode, ties="first"):
    """The item with the best finite score(item) (see ranked), or None when none has one."""
    top = ranked(items, score, mode, ties)
    return top[0] if top else None


def improves(value, best_so_far, mode):
    """Whether an epoch scoring `value` becomes the best so far (the epoch loop's "improved"): at least as good,
    as the later of equal epochs wins; anything beats no best yet or a non-finite one."""
    return key(value, mode) >= key(best_so_far, mode)
