"""Speed of one training epoch: the origin notebook's data path against this project's, side by side.

    python bench/speed.py            # a GPU at 224 px, ~3,000 photos (bench/gpu.sh)
    python bench/speed.py --small    # a CPU at 64 px, a few hundred photos, a couple of minutes

For each model config it times the training phase of an epoch (the validation phase is left out of both):
  notebook  PIL decode + Resize + ToTensor + Normalize in a DataLoader every epoch, fp32, batch 32,
            the frozen backbone's BatchNorm in train mode (as the notebook had it)
  ours      dogs.engine.Run: images decoded once into a uint8 cache, batches on the device, frozen-prefix
            features cached, bf16 autocast + channels_last where the device has them
and the one-off cost of ours (decode cache + frozen features), with the epochs it takes to pay it back, and
ours' first epoch (kernel warm-up; with --compile, the compilation: compare it to decide if compile pays).
Needs torch, torchvision, pillow, numpy, pandas (no Ray, no Optuna). Weights are random (speed only).
"""
# ----------------------------------------------------------------------------- setup
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dogs import engine, models  # noqa: E402
from dogs.config import resolve  # noqa: E402
from dogs.device import default_device  # noqa: E402

CONFIGS = {  # name -> (config overrides, batch size of ours)
    "frozen resnet18 + head": {"model": "resnet18", "unfreeze": 0, "head_on": "logits"},
    "resnet18, layer4 unfrozen": {"model": "resnet18", "unfreeze": 1},
    "resnet18 full fine-tune": {"model": "resnet18", "unfreeze": 4},
    "from-scratch CNN": {"model": "cnn"},
}


def hardware(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- data
def make_photo(job):
    """One 500x375 JPEG that decodes like a photo (smooth shapes, texture, ~40 KB), from its own seed."""
    path, seed = job
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, size=(12, 16, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(low).resize((500, 375), Image.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 12, size=base.shape, dtype=np.int16)
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=85)


def make_photos(root, n_train, n_val, classes=8, seed=0, workers=None):
    """An ImageFolder of generated photos (Train/ and Validation/, `classes` folders), on `workers` processes."""
    jobs = []
    for s, (split, n) in enumerate((("Train", n_train), ("Validation", n_val))):
        for i in range(n):
            folder = root / split / f"class{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"{i}.jpg", (seed, s, i)))
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        for job in jobs:
            make_photo(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(make_photo, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    return root


# ----------------------------------------------------------------------------- notebook pipeline
def notebook_epoch(config, root, device, workers, max_batches=None):
    """One training phase the notebook's way; returns images/s."""
    size = config["image_size"]
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize([0.5] * 3, [0.5] * 3)])
    data = torchvision.datasets.ImageFolder(root / "Train", tf)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, num_workers=workers)
    model = models.build_model(config, len(data.classes), load_weights=False).to(device)
    for m in model.modules():
        m.training = True  # the notebook called model.train(): frozen BatchNorm layers drift
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn, seen = nn.CrossEntropyLoss(), 0
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
        if max_batches and i + 1 >= max_batches:
            break
    sync(device)
    return seen / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- this project's path
def our_epochs(config, device, epochs):
    """(one-off s: decode cache + frozen features, first epoch s (warm-up, compilation), median img/s, cached)."""
    start = time.perf_counter()
    run = engine.Run(config, device=device, log_fn=lambda m: None)
    sync(device)
    one_off = time.perf_counter() - start
    history = list(run.epochs())
    speeds = [m["images_per_s"] for m in history[1:]]  # the first epoch warms up kernels, autotuning, compile
    return one_off, history[0]["epoch_time_s"], statistics.median(speeds), run.cached


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU-sized: 64 px, 320 photos")
    p.add_argument("--size", type=int, help="image size (default 224, --small 64)")
    p.add_argument("--train", type=int, help="training photos (default 3200, --small 320)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count()),
                   help="DataLoader workers of the notebook pipeline (it had 4; default: 4, or fewer CPU cores)")
    p.add_argument("--batch", type=int, help="batch size of ours (default 256 on a GPU, 64 on a CPU)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of ours to time (the first is not counted)")
    p.add_argument("--compile", action="store_true", help="also time the full fine-tune with torch.compile")
    p.add_argument("--only", nargs="*", help="config names to run (substring match)")
    args = p.parse_args()
    device = default_device()
    size = args.size or (64 if args.small else 224)
    n_train = args.train or (320 if args.small else 3200)
    batch = args.batch or (256 if device.type == "cuda" else 64)
    configs = dict(CONFIGS)
    if args.compile:
        configs["resnet18 full fine-tune, compiled"] = {**CONFIGS["resnet18 full fine-tune"], "compile": True}
    if args.only:
        configs = {k: v for k, v in configs.items() if any(o in k for o in args.only)}
    print(f"# bench/speed.py {' '.join(sys.argv[1:])}\n# {time.strftime('%Y-%m-%d %H:%M')}  {hardware(device)}")
    print(f"# {n_train} train photos 500x375 JPEG -> {size}px; notebook: batch 32, fp32, {args.workers} workers; "
          f"ours: batch {batch}, precision auto, channels_last")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        root = make_photos(tmp / "photos", n_train, max(n_train // 8, 32))
        print(f"# generated the photos in {time.perf_counter() - t:.0f}s")
        rows = []
        for name, overrides in configs.items():
            base = resolve({**overrides, "data": str(root), "image_size": size, "weights": "none", "seed": 0,
                            "epochs": args.epochs, "batch_size": batch, "cache_dir": str(tmp / f"cache-{len(rows)}")})
            notebook = notebook_epoch({**base, "batch_size": 32}, root, device, args.workers)
            one_off, first_epoch, ours, cached = our_epochs(base, device, args.epochs)
            notebook_s, ours_s = n_train / notebook, n_train / ours
            payback = one_off / (notebook_s - ours_s) if notebook_s > ours_s else float("inf")
            rows.append({"config": name, "notebook img/s": notebook, "ours img/s": ours, "speed-up": ours / notebook,
                         "notebook s/epoch": notebook_s, "ours s/epoch": ours_s, "one-off s": one_off,
                         "ours 1st epoch s": first_epoch,
                         "pays back after epochs": payback, "feature cache": cached})
            print(f"  {name}: notebook {notebook:,.0f} img/s, ours {ours:,.0f} img/s ({ours / notebook:.1f}x)",
                  flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table.to_markdown(index=False, floatfmt=",.2f") if _has_tabulate() else table.to_string(index=False))


def _has_tabulate():
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
