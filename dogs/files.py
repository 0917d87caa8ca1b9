"""The file mechanisms every cache and output shares: write to a temp name then rename; build once under a lock;
never replace what we did not write (an output folder's files recognised by their contents); CSVs that keep any name."""
import contextlib
import json
import logging
import os
import secrets
import shutil
import stat
import zipfile
from pathlib import Path

from .errors import OutputError

log = logging.getLogger("dogs")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same suffix); on success rename it onto `path`.

    Readers never see half a file or folder: a crash leaves at most a hidden temp name, removed on error. The temp
    name is this writer's own (pid and a random token): two writers of one path (threads, or machines sharing a
    folder over NFS, whose pids may be equal) never write into one temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def build_once(done, build):
    """Call `build()` unless the file `done` exists; processes that start together build it once.

    `build` must create `done` last (e.g. with atomic_path), so that its presence means the work is complete.
    Returns True when this process built it. The lock is the kernel's (flock): a killed builder releases it, and
    its `.lock` file, left behind, is harmless; a live builder is waited for, with one line saying so. Deleting a
    lock file in use lets a second process build too: harmless (each writes its own temp file, renamed whole).
    """
    from filelock import FileLock, Timeout

    done = Path(done)
    if done.exists():
        return False
    done.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(done.with_name(done.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process to finish %s (it holds %s; if none is building it, e.g. its machine "
                 "died holding an NFS lock, delete that file)", done, lock.lock_file)
        lock.acquire()
    try:
        if done.exists():  # another process built it while we waited
            return False
        build()
    finally:
        lock.release()
    return True


# to_csv(..., **CSV): RFC 4180's line end. Python's csv quotes a field holding a character of the line end, so every
# \r and \n in a name is quoted; with pandas' "\n" a bare \r stays bare and readers split the row there
CSV = {"index": False, "lineterminator": "\r\n"}


def write_csv(table, path):
    """A pandas table as a CSV at `path` (whole or not at all) whose every row reads back as one, any name in it."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, **CSV)
    return Path(path)


def output_folder(path, flag):
    """`path` as an output folder: absent (made later) or a folder; a file, a FIFO, a dangling link: one line."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        from .data import what_it_is

        raise OutputError(f"{flag} {path}: it is {what_it_is(path)}, not a folder: give a folder (a new one, or one "
                          "that holds only what this command wrote there)")
    return path


def _starts_with(*heads):
    def ours(path):
        with open(path, "rb") as f:
            return f.read(max(map(len, heads))).startswith(heads)
    return ours


def _matplotlib_png(path):   # savefig writes the PNG signature, then a Software tEXt chunk naming Matplotlib
    with open(path, "rb") as f:
        head = f.read(256)
    return head.startswith(b"\x89PNG") and b"Matplotlib" in head


def _our_checkpoint(path):   # torch.save's zip; its pickle (the dict without the tensors) names our keys
    try:
        with zipfile.ZipFile(path) as archive:
            pickle = next(name for name in archive.namelist() if name.endswith("/data.pkl"))
            text = archive.read(pickle)
    except (zipfile.BadZipFile, StopIteration, OSError):
        return False
    return all(key in text for key in (b"config", b"classes", b"epoch", b"metrics"))


def _our_config_json(path):  # dogs.train's config.json: a whole config (model, data, epochs, ...)
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"model", "data", "epochs", "image_size"} <= config.keys()


REPORT = ("accuracy.csv", "per_class.csv", "confusion.csv", "confusion.png")   # dogs.submission.write_report's files

# How each file that a command writes into an output folder is recognised as one of ours (an earlier run's): only
# those are replaced. Another file under one of these names (the user's) is refused, never overwritten.
OURS = {
    "predictions.csv": _starts_with(b"file,class,class_index,probability,"),
    "submission.csv": _starts_with(b"Id,Class\r\n", b"Id,Class\n"),
    "config.yaml": _starts_with(b"# the config of "),
    "history.csv": _starts_with(b"epoch,"),
    "config.json": _our_config_json,
    "predictions.png": _matplotlib_png,
    "best.pt": _our_checkpoint,
    "last.pt": _our_checkpoint,
}


def is_ours(path):
    """Whether `path` is a file (or report folder) that this project writes under that name, e.g. an earlier run's."""
    path = Path(path)
    try:
        if path.name == "report" and path.is_dir() and not path.is_symlink():
            return all(p.name in REPORT and is_plain_file(p) for p in path.iterdir())
        return path.name in OURS and is_plain_file(path) and OURS[path.name](path)
    except OSError:   # unreadable: not known to be ours
        return False


def is_special(path):
    """Whether `path` is there but neither a file nor a folder: a FIFO (opening it waits for a writer), a device
    (/dev/zero never ends), a socket; links followed."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def is_plain_file(path):
    return stat.S_ISREG(os.lstat(path).st_mode)


def refuse_others(folder, names, flag):
    """Raise one OutputError line when `folder` holds, under a name in `names` we are about to write, anything we
    did not write (a user's file, a folder, a link); an earlier run's files (is_ours) may be replaced."""
    folder = output_folder(folder, flag)
    theirs = [name for name in names if os.path.lexists(folder / name) and not is_ours(folder / name)]
    if theirs:
        raise OutputError(f"{flag} {folder}: its {', '.join(theirs)} would be replaced, and "
                          f"{'it is' if len(theirs) == 1 else 'they are'} not what this project writes there: "
                          "move them away, or give another folder")
    return folder
