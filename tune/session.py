"""What one fit of a search and the Tune parts it runs tell each other: a `SearchSession` the driver makes
(tune.search.fit), hands to the study's searcher and the retention callback as an argument, and reads back after
fit(). Never pickled with them (Ray's tuner.pkl): a resumed search gets a session of its own.

A new tuner's parts get it when tune.tuner.make_tuner makes them. A restored tuner's parts are unpickled by Ray inside
tune.Tuner.restore, out of our hands: tune.tuner.restore_tuner makes that call inside `restoring(session)`, and each
part takes that session as it is unpickled (`unpickled_into`).
"""
import contextlib
import contextvars
import threading
from dataclasses import dataclass, field


@dataclass
class SearchSession:
    # the experiment folder as this session names it: a moved or copied experiment continues its own study.db (or
    # its bucket's), never the one where tuner.pkl says it was searched; None: as the searcher's saved state says
    exp_dir: str | None = None
    # why the study's database was lost (None while it answers): the searcher stopped Tune as on Ctrl-C and kept what
    # it could not write in its saved state; tune.search says this in one line
    lost: str | None = None
    # set at each checkpoint Tune registers: the time budget stops a search only once this session made progress
    checkpointed: threading.Event = field(default_factory=threading.Event)


_RESTORING = contextvars.ContextVar("dogs_tune_restoring", default=None)


@contextlib.contextmanager
def restoring(session):
    """Parts unpickled inside this block (Ray's tune.Tuner.restore) take `session`."""
    token = _RESTORING.set(session)
    try:
        yield session
    finally:
        _RESTORING.reset(token)


def unpickled_into():
    """The session a part being unpickled takes: the restore's in progress, else a session of its own (a part
    unpickled by itself, as the tests do)."""
    return _RESTORING.get() or SearchSession()
