"""Where experiments live: a local folder or a URI Ray Tune accepts (s3://bucket/prefix, file:///abs/path, ...).

Ray reads and writes the experiment itself; these helpers cover the few files we handle ourselves
(search_space.yaml, trials.csv, the searcher's state) through pyarrow's filesystems, as Ray does.
A URI's query (s3://bucket/runs?endpoint_override=host:port&scheme=http) is kept when joining names.

One command per experiment at a time: the commands that write an experiment (tune.search: new, --resume,
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
import fnmatch
import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs

from dogs.errors import ExperimentError, StorageError
from dogs.files import atomic_path


DEFAULT_STORAGE = "runs"   # where experiments live when --storage is not given


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
# SQLite's words for a failed write (the study's database): sqlite3 raises them as OperationalError, not OSError
SQLITE_WRITE_ERRORS = ("database or disk is full", "disk I/O error", "attempt to write a readonly database")


def is_uri(location):
    return "://" in str(location)


def absolute(location):
    """A URI as it is; a local path made absolute."""
    return str(location) if is_uri(location) else str(Path(location).resolve())


def join(location, *names):
    """location/name/...; a URI keeps its scheme and query."""
    if not is_uri(location):
        return str(Path(location, *names))
    parts = urlsplit(str(location))
    return urlunsplit(parts._replace(path="/".join([parts.path.rstrip("/"), *names])))


def name(location):
    """The last name of the path: runs/e2e -> e2e, s3://bucket/runs/e2e?x=1 -> e2e."""
    return Path(urlsplit(str(location)).path if is_uri(location) else location).name


def filesystem(location):
    """(pyarrow filesystem, path on it)."""
    return pyarrow.fs.FileSystem.from_uri(absolute(location))


def as_uri(fs, path):
    """A path on a filesystem Ray gave us, as a user would write it (no query: for printing)."""
    return path if isinstance(fs, pyarrow.fs.LocalFileSystem) else f"{fs.type_name}://{path}"


def is_file(location):
    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def write_text(location, text):
    """Write a text file, creating its folder; whole or not at all (a local file through a temporary name, as
    dogs.files.atomic_path; an object store's upload appears whole)."""
    fs, path = filesystem(location)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        return
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def subfolders_with(location, filename):
    """{name: modification time} of the folders in `location` that hold `filename`."""
    fs, path = filesystem(location)
    folders = [info for info in fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
               if info.type == pyarrow.fs.FileType.Directory]
    files = fs.get_file_info([f"{info.path}/{filename}" for info in folders])
    # object stores have no folder times: use the file's
    return {folder.base_name: folder.mtime or file.mtime
            for folder, file in zip(folders, files) if file.type == pyarrow.fs.FileType.File}


@contextlib.contextmanager
def local_dir(location, pattern="*"):
    """A local folder with the files of `location` named like `pattern`: the folder itself when it is
    local, else a temporary copy of those files (not of subfolders)."""
    fs, path = filesystem(location)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        for info in fs.get_file_info(pyarrow.fs.FileSelector(path)):
            if info.type == pyarrow.fs.FileType.File and fnmatch.fnmatch(info.base_name, pattern):
                pyarrow.fs.copy_files(info.path, f"{tmp}/{info.base_name}", source_filesystem=fs,
                                      destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield tmp


def write_failure(err):
    """Why a write failed (a full disk or quota, a read-only or too-large file, SQLite's 'disk is full') behind an
    exception, through its causes and the text of a trial's error Ray passes on ('[Errno 28] ...'); None when it
    is something else (a missing or unreadable file is not a failed write)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS and not isinstance(err, StorageError):
            return os.strerror(err.errno)
        text = str(err)
        for number in re.findall(r"\[Errno (\d+)\]", text):
            if int(number) in WRITE_ERRNOS:
                return os.strerror(int(number))
        for words in SQLITE_WRITE_ERRORS:
            if words in text:
                return f"SQLite: {words}"
        err = err.__cause__ or err.__context__
    return None


def free_space(location):
    """'N MB free on <mount point>' of a local path (its nearest existing folder), '' for a URI."""
    if is_uri(location):
        return ""
    path = Path(location).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    mount = path
    while not os.path.ismount(mount):
        mount = mount.parent
    return f"{free / 1e6:.1f} MB free on {mount}"


class LoggedWriteFailures(logging.Handler):
    """The failed writes Ray logs and carries on from (its experiment state, a sync of trial files)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.failures = []   # (why, path or None)

    def emit(self, record):
        err = record.exc_info[1] if record.exc_info else None
        why = write_failure(err) or write_failure(Exception(record.getMessage()))
        if why:
            self.failures.append((why, getattr(err, "filename", None)))


@contextlib.contextmanager
def writing(what, location, then):
    """Any OSError (disk full, read-only, ...) or SQLite write error while writing `what` to `location`, raised or
    only logged by Ray (which carries on without the file), as one StorageError line: the path, what, why, the
    free space and `then` (how to continue once fixed)."""
    logged = LoggedWriteFailures()
    logging.getLogger("ray").addHandler(logged)
    try:
        yield
    except Exception as err:
        # a write failure, or what followed one Ray logged (its reading back a file the full disk left empty)
        why, path = write_failure(err), getattr(err, "filename", None)
        if why is None and logged.failures:
            why, path = logged.failures[0]
        if why is None:
            raise
        raise StorageError(failed(what, path or location, why, then)) from None
    finally:
        logging.getLogger("ray").removeHandler(logged)
    if logged.failures:
        why, path = logged.failures[0]
        raise StorageError(failed(what, path or location, why, then))


def failed(what, path, why, then):
    free = free_space(path)
    return f"cannot write {what} ({path}): {why}{'; ' + free if free else ''}; {then}"


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
    if is_uri(exp_dir):
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
