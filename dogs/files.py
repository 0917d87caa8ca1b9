"""Two file mechanisms every cache and output shares: write to a temp name then rename; build once under a lock."""
import contextlib
import logging
import os
import secrets
import shutil
from pathlib import Path

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
