"""Two file mechanisms every cache and output shares: write to a temp name then rename; build once under a lock."""
import contextlib
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same suffix); on success rename it onto `path`.

    Readers never see half a file or folder: a crash leaves at most a hidden temp name, removed on error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
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
    Returns True when this process built it.
    """
    from filelock import FileLock

    done = Path(done)
    if done.exists():
        return False
    done.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(done.with_name(done.name + ".lock"))):
        if done.exists():  # another process built it while we waited
            return False
        build()
    return True
