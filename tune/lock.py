"""One command per experiment at a time: the commands that write an experiment (tune.search: new, --resume,
--resume --samples N; tune.best --retrain, with or without --top) hold an OS lock on <experiment>/.dogs-tune.lock
while they run. A second one on the same folder is one line naming the running one (pid, host, command, since
when) and exits 2. Reading commands (tune.best without --retrain, --predict, --export) take no lock.

The lock is fcntl.flock on the file, which the kernel releases when its holder exits however it exits (kill -9
included): a killed command's lock is taken over by the next one, whose owner line replaces the dead one's. The
file itself stays (removing a lock file while another process opens it would let two hold "the" lock).
On NFS (EFS included) Linux maps flock to NFSv4 byte-range locks, which hold across machines; a holder whose
machine dies keeps it until the server's lease ends (about 90 s). An NFSv3 mount with `nolock` locks per machine
only. An experiment in a bucket (s3://, gs://) has no lock: object stores have none to offer (docs/search.md).
"""
import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import socket
import sys
from datetime import datetime
from pathlib import Path

from dogs.errors import ExperimentError
from tune import storage

LOCK_FILE = ".dogs-tune.lock"


class ExperimentBusy(ExperimentError):
    """Another command holds the experiment's lock."""


def command_line(prog, argv):
    """The command as it was typed, for the owner line: passwords in URLs (database, tracker) masked."""
    return re.sub(r"(://[^/:@\s]*:)[^@/\s]*@", r"\1***@", shlex.join([prog, *argv]))


@contextlib.contextmanager
def held(exp_dir, command):
    """Hold the experiment's lock while the block runs (nothing for an experiment in a bucket). The folder is
    made if missing; if it is left holding only the lock file, it goes again (nothing was written)."""
    if storage.is_uri(exp_dir):
        yield
        return
    folder = Path(exp_dir)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        take(fd, exp_dir, path)
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner(command)).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)   # released cleanly: the next command finds no owner line (see take)
            if made and only_lock(folder):   # still locked: nobody can write into the folder meanwhile
                path.unlink()
                folder.rmdir()   # rmdir, not rmtree: never a folder that holds anything
        os.close(fd)


def take(fd, exp_dir, path):
    """flock the open lock file, or raise ExperimentBusy naming its holder; a dead holder's owner line is said."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise ExperimentBusy(f"{exp_dir} is in use by {owner_text(read_owner(path))}; one command per experiment "
                             "at a time: wait for it to end (or stop it), then run this again") from None
    stale = read_owner(path)
    if stale:   # its holder ended without releasing it (killed): the kernel let it go
        print(f"Note: {exp_dir} was last held by {owner_text(stale)}, which ended without releasing it "
              "(killed?): taken over", file=sys.stderr)


def owner(command):
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": datetime.now().astimezone().isoformat(timespec="seconds")}


def read_owner(path):
    """The owner line of a lock file ({} when empty, unreadable or not ours)."""
    try:
        value = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def owner_text(info):
    if not info:
        return "another command (it is writing its owner line)"
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} "
            f"({info.get('command', 'a command')})")


def only_lock(exp_dir):
    """True when a local experiment folder holds nothing but the lock file (a new search's, before it started)."""
    folder = Path(exp_dir)
    return folder.is_dir() and {p.name for p in folder.iterdir()} <= {LOCK_FILE}
