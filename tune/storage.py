"""Where experiments live: a local folder or a URI Ray Tune accepts (s3://bucket/prefix, file:///abs/path, ...).

Ray reads and writes the experiment itself; these helpers cover the few files we handle ourselves
(search_space.yaml, trials.csv, the searcher's state) through pyarrow's filesystems, as Ray does.
A URI's query (s3://bucket/runs?endpoint_override=host:port&scheme=http) is kept when joining names.
"""
import contextlib
import fnmatch
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs

from dogs.files import atomic_path


def is_uri(location):
    return "://" in str(location)


def resolve(location):
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
    return pyarrow.fs.FileSystem.from_uri(resolve(location))


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
