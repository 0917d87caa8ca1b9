"""Transfer learning on real photos: an ImageNet-pretrained MobileNetV2 against a plain script and from scratch.

    python bench/transfer.py            # Food-10 (3,500 Train / 750 Validation / 750 Test), 10-minute searches:
                                        # ~40 min on the 2-core dev CPU (bench/RESULTS.md, "Transfer")
    python bench/transfer.py --small    # 20 + 10 photos per class, 60 px / 96 px, 45 s searches: every row in minutes

Rows, one after another in this process's run, each from cold caches of its own (its wall time pays its
own decoding and feature pass), each scored on the held-out Test/ photos against test_labels.csv:
  (a) plain      the 30-line script a new user would write: torchvision's frozen mobilenet_v2 (IMAGENET1K_V1,
                 its own transforms: resize 256, centre crop 224, ImageNet normalization) -> 1,280 pooled
                 features of Train and Test -> scikit-learn LogisticRegression(C=0.1)
  (b) dogs.train `python -m dogs.train` with frozen mobilenet_v2 + a linear head, 10 epochs, the best
                 validation epoch's weights -> its submission.csv
  (c) transfer   `python -m tune.search --space transfer.yaml --time-budget 10m`, then
                 `python -m tune.best --submit` -> submission.csv
  (d) scratch    the same with cnn_scratch.yaml (the notebook's CNN from scratch)
and the seconds of one trial-epoch (train + validation) of one frozen config with the feature cache (the
backbone's output computed once, before the timed epochs) against feature_cache false (the backbone on every
photo of every epoch), on 50 Train + 10 Validation photos per class (an uncached epoch of all of them would
take as long as a whole feature pass again). Test accuracy comes with its 95% Wilson interval (dogs/uncertainty.py: n = the Test photos).
Needs the mobilenet_v2 weights in $TORCH_HOME/hub/checkpoints (python -m dogs.weights install ...).
"""
# ----------------------------------------------------------------------------- setup
import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dogs.uncertainty import wilson  # noqa: E402

WEIGHTS = "IMAGENET1K_V1"   # the mobilenet_v2 file that installs offline (mobilenet_v2-b0353104.pth)
FROZEN = {"model": "mobilenet_v2", "weights": WEIGHTS, "unfreeze": 0, "head_width": 0, "dropout": 0.0,
          "lr": 1e-3, "label_smoothing": 0.1}   # row (b)'s config and the epoch-speed rows'


def hardware():
    load = os.getloadavg()[0]
    return (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} "
            f"at the start, torch {__import__('torch').__version__}")


def sh(cmd, log, env=None, timeout=None):
    """Run a command with its output into `log`; (exit status, wall seconds)."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        f.flush()
        code = subprocess.call(list(map(str, cmd)), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})}, timeout=timeout)
    return code, time.perf_counter() - start


def score(labels, predicted):
    """(test accuracy, its 95% Wilson interval, n) of predicted classes {Id: class} against test_labels.csv."""
    truth = pd.read_csv(labels).set_index("Id")["Class"]
    missing = set(truth.index) - set(predicted)
    if missing:
        raise SystemExit(f"no prediction for {len(missing)} Test photos, e.g. {sorted(missing)[:3]}")
    right = sum(int(predicted[i] == c) for i, c in truth.items())
    low, high = wilson(right, len(truth))
    return right / len(truth), (low, high), len(truth)


def score_csv(labels, submission):
    frame = pd.read_csv(submission)
    return score(labels, dict(zip(frame["Id"], frame["Class"])))


# ----------------------------------------------------------------------------- data
def subset(src, labels, dest, train, val, test):
    """A small copy of the photos as symlinks: `train`/`val` photos per class, the first `test` Test photos, and
    their labels. Returns (root, labels csv)."""
    for split, n in (("Train", train), ("Validation", val)):
        for folder in sorted((src / split).iterdir()):
            (dest / split / folder.name).mkdir(parents=True)
            for photo in sorted(folder.iterdir())[:n]:
                (dest / split / folder.name / photo.name).symlink_to(photo)
    truth = pd.read_csv(labels).head(test)
    (dest / "Test").mkdir()
    for name in truth["Id"]:
        (dest / "Test" / name).symlink_to(src / "Test" / name)
    truth.to_csv(dest / "test_labels.csv", index=False)
    return dest, dest / "test_labels.csv"


# ----------------------------------------------------------------------------- (a) the plain script
def plain_baseline(root, labels, size, threads):
    """Frozen torchvision mobilenet_v2 features + scikit-learn logistic regression; (predicted {Id: class}, n)."""
    import torch
    import torchvision
    from sklearn.linear_model import LogisticRegression
    from torchvision import transforms
    torch.set_num_threads(threads)
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    net = torchvision.models.mobilenet_v2(weights=weights).eval()
    tf = transforms.Compose([transforms.Resize(size * 256 // 224), transforms.CenterCrop(size), transforms.ToTensor(),
                             transforms.Normalize(weights.transforms().mean, weights.transforms().std)])

    def features(dataset):
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=threads)
        with torch.inference_mode():
            return torch.cat([torch.flatten(torch.nn.functional.adaptive_avg_pool2d(net.features(x), 1), 1)
                              for x, _ in loader]).numpy()

    train = torchvision.datasets.ImageFolder(root / "Train", tf)
    test_files = sorted(pd.read_csv(labels)["Id"])
    test = [(tf(torchvision.datasets.folder.default_loader(root / "Test" / f)), 0) for f in test_files]
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(features(train), train.targets)
    return dict(zip(test_files, clf.predict(features(test))))


# ----------------------------------------------------------------------------- (c), (d) a search and its hand-over
def search_and_submit(space, root, runs, name, budget, cache, log, extra=()):
    """tune.search --time-budget, then tune.best --submit, with a cold cache of their own (every trial reads
    DOGS_CACHE); (submission.csv, trials that trained an epoch, trial-epochs)."""
    env = {"DOGS_CACHE": str(cache)}
    sh([sys.executable, "-m", "tune.search", "--space", space, "--data", root, "--storage", runs, "--name", name,
        "--time-budget", budget, *extra], log, env, timeout=3600)
    out = runs / name / "best"
    sh([sys.executable, "-m", "tune.best", "--experiment", runs / name, "--submit", "--out", out], log, env,
       timeout=1800)
    trials = pd.read_csv(runs / name / "trials.csv")
    epochs = trials["epochs"].fillna(0)
    return out / "submission.csv", int((epochs > 0).sum()), int(epochs.sum())


# ----------------------------------------------------------------------------- epoch speed: cached vs not
def epoch_seconds(config, epochs):
    """Wall seconds of each trial-epoch (train + validation) of dogs.engine.Run; the first is left out when
    there are more (kernel warm-up), and the one-off set-up (decode, feature pass) is never in them."""
    import torch

    from dogs import engine
    from dogs.config import resolve
    run = engine.Run(resolve({**config, "epochs": epochs}), device=torch.device("cpu"), log_fn=lambda m: None)
    times, start = [], time.perf_counter()
    for _ in run.epochs():
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    times = times[1:] or times
    return sorted(times)[len(times) // 2], run.cached


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/tmp/food10/photos"), help="ImageFolder root with Test/")
    p.add_argument("--labels", type=Path, default=Path("/tmp/food10/test_labels.csv"), help="Test/'s Id,Class")
    p.add_argument("--small", action="store_true", help="20 + 10 photos per class, 100 Test, small images, 45 s")
    p.add_argument("--budget", help="each search's --time-budget (default 10m, --small 45s)")
    p.add_argument("--rows", default="a,b,c,d,speed", help="which rows to run (comma list)")
    p.add_argument("--speed-photos", type=int, help="Train photos per class of the epoch-speed row (default 50, "
                                                    "--small 5; Validation: a fifth)")
    p.add_argument("--out", type=Path, help="keep logs and experiments here (default: a temporary folder)")
    args = p.parse_args()
    rows_wanted = set(args.rows.split(","))
    budget = args.budget or ("45s" if args.small else "10m")
    size, scratch_size = (96, 64) if args.small else (224, None)
    threads = min(2, os.cpu_count())
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # a local Ray for the searches, no token
    print(f"# bench/transfer.py {' '.join(sys.argv[1:])}\n# {time.strftime('%Y-%m-%d %H:%M')}  {hardware()}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="transfer-", dir=args.out))
    log = tmp / "log.txt"
    root, labels = args.data, args.labels
    if args.small:
        root, labels = subset(args.data, args.labels, tmp / "photos", train=20, val=10, test=100)
    n_train = sum(1 for _ in (root / "Train").rglob("*.jpg"))
    print(f"# {root}: {n_train} Train photos, {len(pd.read_csv(labels))} Test; searches --time-budget {budget}; "
          f"logs in {log}", flush=True)
    sized = [] if size == 224 else ["--set", f"image_size={size}"]
    rows = []

    def row(name, what, seconds, result, note=""):
        acc, (low, high), n = result
        rows.append({"row": name, "what": what, "test acc": f"{100 * acc:.1f}%",
                     "95% interval": f"{100 * low:.1f}-{100 * high:.1f}", "n test": n, "wall s": round(seconds),
                     "note": note})
        print(f"  {name}: {100 * acc:.1f}% test ({100 * low:.1f}-{100 * high:.1f}) in {seconds:.0f} s {note}", flush=True)

    # (a) the plain script: frozen features + logistic regression
    if "a" in rows_wanted:
        start = time.perf_counter()
        predicted = plain_baseline(root, labels, size, threads)
        row("(a) plain", "frozen mobilenet_v2 features + LogisticRegression(C=0.1)", time.perf_counter() - start,
            score(labels, predicted))

    # (b) dogs.train, frozen mobilenet_v2 + linear head
    cache_b = tmp / "cache-b"
    config_b = {**FROZEN, "image_size": size, "epochs": 10, "data": str(root), "cache_dir": str(cache_b), "seed": 0}
    if "b" in rows_wanted:
        sets = [f"{k}={v}" for k, v in config_b.items() if k not in ("data",)]
        code, seconds = sh([sys.executable, "-m", "dogs.train", "--data", root, "--device", "cpu", "--out",
                            tmp / "train-b", "--set", *sets], log, timeout=3600)
        row("(b) dogs.train", "frozen mobilenet_v2 + linear head, 10 epochs", seconds,
            score_csv(labels, tmp / "train-b" / "submission.csv"), "" if code == 0 else f"exit {code}")

    # (c) the transfer space, (d) the scratch CNN: each a search with the same budget, then its hand-over
    for key, space, extra in (("c", "transfer.yaml", sized),
                              ("d", "cnn_scratch.yaml", ["--set", f"image_size={scratch_size}"] if scratch_size else [])):
        if key not in rows_wanted:
            continue
        start = time.perf_counter()
        cache = tmp / f"cache-{key}"
        submission, trials, epochs = search_and_submit(space, root, tmp / "runs", key, budget, cache, log, extra)
        row(f"({key}) {Path(space).stem}", f"tune.search --space {space} --time-budget {budget} + tune.best --submit",
            time.perf_counter() - start, score_csv(labels, submission), f"{trials} trials, {epochs} trial-epochs")
        shutil.rmtree(cache, ignore_errors=True)

    # seconds per trial-epoch of one frozen config, cached features vs the backbone every epoch, on a per-class
    # subset of the photos (an uncached epoch of all of them takes as long as a whole feature pass)
    if "speed" in rows_wanted:
        per_class = args.speed_photos or (5 if args.small else 50)
        sub, _ = subset(root, labels, tmp / "speed-photos", train=per_class, val=max(per_class // 5, 2), test=0)
        n_sub = sum(1 for _ in (sub / "Train").rglob("*.jpg"))
        n_val = sum(1 for _ in (sub / "Validation").rglob("*.jpg"))
        config = {**FROZEN, "image_size": size, "data": str(sub), "cache_dir": str(tmp / "cache-speed"), "seed": 0}
        cached, on = epoch_seconds(config, 4)
        plain, off = epoch_seconds({**config, "feature_cache": False}, 1)
        note = (f"{n_sub} Train + {n_val} Validation photos: feature cache {cached:.2f} s (cached: {on}), backbone "
                f"every epoch {plain:.1f} s (cached: {off}): {plain / cached:.0f}x")
        print(f"  trial-epoch, frozen mobilenet_v2 at {size} px, {note}", flush=True)
        rows.append({"row": "epoch speed", "what": f"one frozen trial-epoch (train + validation), {size} px",
                     "test acc": "", "95% interval": "", "n test": "", "wall s": "", "note": note})

    print()
    table = pd.DataFrame(rows)
    try:
        print(table.to_markdown(index=False))
    except ImportError:   # tabulate: pip install -e '.[bench]'
        print(table.to_string(index=False))
    print(f"\n# {time.strftime('%H:%M')}, load average {os.getloadavg()[0]:.1f} at the end; kept in {tmp}"
          if args.out else "")
    if not args.out:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
