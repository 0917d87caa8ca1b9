"""Whether a model learnt anything: the two rules behind the one-line warnings of tune.best, the search's summary
and report/ (tests/test_baseline.py states them).

- On Validation (true labels known): its accuracy is not above always answering the largest class, by its 95%
  interval (dogs.uncertainty: Wilson's, from the number of images scored): the interval's low end is at or below
  the largest class's share of the labels. A validation set too small to tell the model from that guess is
  warned about too: nothing shows that the model learnt.
- On Test (true labels unknown): with more than one class, at least ONE_CLASS of the predictions are one class.

Each rule returns its warning line, or None.
"""
from collections import Counter

from . import uncertainty

ONE_CLASS = 0.9   # the share of Test predictions in one class from which a model is said to answer one class


def majority(labels, classes=None):
    """(the largest class, its share of `labels`): what always answering it scores; `classes` names the indices."""
    counts = Counter(labels)
    label, count = max(sorted(counts.items()), key=lambda item: item[1])   # of equal counts the first class
    return (classes[label] if classes is not None else label), count / len(labels)


def below_majority(accuracy, n, labels, classes=None, what="the handed-over model",
                   fix="check its predictions (report/), train longer or search again"):
    """The warning when `accuracy` (a proportion of `n` validation images) is not above always answering the
    largest class of `labels` by its 95% interval; None when it is above, or nothing can be said (no score, no
    size, no labels)."""
    if not labels or not isinstance(n, int) or n <= 0:
        return None
    bounds = uncertainty.interval("val_acc", accuracy, {"val_images": n})
    if bounds is None:
        return None
    largest, share = majority(labels, classes)
    if bounds[0] > share:
        return None
    return (f"Warning: {what} may have learnt nothing: its val_acc {accuracy:.4f} (95% [{bounds[0]:.4f}, "
            f"{bounds[1]:.4f}] on {n} images) is not above always answering the largest class, {largest!r} "
            f"({share:.4f} of Validation); {fix}")


def one_class(predicted, classes, what="the handed-over model"):
    """The warning when at least ONE_CLASS of `predicted` (class indices of photos whose labels are unknown) are one
    class, and there is more than one class; None otherwise."""
    if len(classes) < 2 or len(predicted) == 0:
        return None
    label, share = majority(list(predicted))
    if share < ONE_CLASS:
        return None
    return (f"Warning: {what} answers {classes[label]!r} for {share:.0%} of the {len(predicted)} Test photos (the "
            f"rule: >= {ONE_CLASS:.0%} one class of {len(classes)}): it may have learnt nothing; check report/")
