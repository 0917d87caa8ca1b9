"""Trials sharing one GPU, as `--gpus-per-trial 0.25` runs them: total training images/s of 4 against 1 alone.

    python bench/share.py --data DIR          # a GPU: full fine-tune ResNet18 at 224 px, batch 256 (bench/gpu.sh)
    python bench/share.py --small             # a CPU: 32 px, a few generated photos, a minute or two

Each trial is its own process running dogs.engine.Run on the same device, as Ray's trial workers are (a
fractional GPU is the whole GPU, shared). First one process alone (it also builds the decode cache the others
then map), then --procs processes together. In each, the first epoch warms up (cuDNN autotuning, the
batches' upload) and is not counted; the processes wait for each other after it, so the counted epochs
overlap. Two totals: "sum" = the sum of each process's median training-phase images/s (the speed Run
reports, validation left out, as in bench/speed.py), and "wall" = all counted training images over the wall
time from the common start to the last process's end (validation phases included: a lower bound).
Needs torch, torchvision, pillow, numpy (no Ray, no Optuna). Weights are random (speed only).
"""
# ----------------------------------------------------------------------------- setup
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BARRIER_TIMEOUT_S = 600


# ----------------------------------------------------------------------------- one trial process
def child(args):
    """One trial: Run's epochs; after the first, wait for the other processes; print the counted epochs as JSON."""
    import torch

    from dogs import engine
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.procs))   # as Ray's cpus_per_trial would
    config = {"data": args.data, "cache_dir": args.cache_dir, "model": "resnet18", "unfreeze": 4, "weights": "none",
              "image_size": args.size, "batch_size": args.batch, "epochs": args.epochs, "seed": 0}
    run = engine.Run(config, log_fn=lambda m: None)
    epochs, start = [], None
    for metrics in run.epochs():
        if start is None:   # the warm-up epoch is over: wait until every process has finished its own
            Path(args.barrier, f"ready-{os.getpid()}").touch()
            deadline = time.monotonic() + BARRIER_TIMEOUT_S
            while len(list(Path(args.barrier).glob("ready-*"))) < args.procs and time.monotonic() < deadline:
                time.sleep(0.01)
            start = time.time()
            continue
        epochs.append({"img_s": metrics["images_per_s"], "images": metrics["images_per_s"] * metrics["epoch_time_s"],
                       "end": time.time()})
    device = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(json.dumps({"pid": os.getpid(), "device": device, "start": start, "epochs": epochs}), flush=True)


def together(args, procs, cache_dir):
    """Start `procs` trial processes at once; (sum of medians img/s, wall img/s, seconds) of their counted epochs."""
    with tempfile.TemporaryDirectory() as barrier:
        cmd = [sys.executable, __file__, "--child", "--data", args.data, "--cache-dir", cache_dir, "--size",
               str(args.size), "--batch", str(args.batch), "--epochs", str(args.epochs), "--procs", str(procs),
               "--barrier", barrier]
        t = time.perf_counter()
        children = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
        outputs = [c.communicate()[0] for c in children]
        seconds = time.perf_counter() - t
    if any(c.returncode for c in children):
        sys.exit(f"a trial process failed (exit codes {[c.returncode for c in children]})")
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    total = sum(statistics.median(e["img_s"] for e in r["epochs"]) for r in results)
    images = sum(e["images"] for r in results for e in r["epochs"])
    wall = images / (max(e["end"] for r in results for e in r["epochs"]) - min(r["start"] for r in results))
    return total, wall, seconds, results[0]["device"]


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU-sized: 32 px, 64 generated photos, batch 16")
    p.add_argument("--data", help="ImageFolder (default: generated photos, 3200 train; --small 64)")
    p.add_argument("--procs", type=int, default=4, help="trial processes sharing the device (default 4)")
    p.add_argument("--size", type=int, help="image size (default 224, --small 32)")
    p.add_argument("--batch", type=int, help="batch size (default 256, --small 16)")
    p.add_argument("--epochs", type=int, help="epochs per process, the first not counted (default 4, --small 3)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    p.add_argument("--barrier", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    args.size = args.size or (32 if args.small else 224)
    args.batch = args.batch or (16 if args.small else 256)
    args.epochs = args.epochs or (3 if args.small else 4)
    print(f"# bench/share.py {' '.join(sys.argv[1:])}\n# {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.data:
            import speed
            t = time.perf_counter()
            n = 64 if args.small else 3200
            args.data = str(speed.make_photos(Path(tmp, "photos"), n, max(n // 8, 16)))
            print(f"# generated {n} photos in {time.perf_counter() - t:.0f}s")
        cache_dir = str(Path(tmp, "cache"))
        print(f"# full fine-tune resnet18 (random weights), {args.size}px, batch {args.batch}, {args.epochs} epochs "
              f"per process (the first not counted), data {args.data}")
        alone, alone_wall, s1, device = together(args, 1, cache_dir)   # also builds the decode cache
        print(f"  1 process alone: {alone:,.0f} img/s (wall {alone_wall:,.0f}), {s1:.0f}s on {device}", flush=True)
        shared, shared_wall, sn, _ = together(args, args.procs, cache_dir)
        print(f"  {args.procs} processes together: {shared:,.0f} img/s in all (wall {shared_wall:,.0f}), {sn:.0f}s",
              flush=True)
    print(f"\n| trials on one {device} | total img/s (sum of medians) | vs alone | total img/s (wall) | vs alone |")
    print("|---|---|---|---|---|")
    print(f"| 1 alone | {alone:,.0f} | 1.00x | {alone_wall:,.0f} | 1.00x |")
    print(f"| {args.procs} together | {shared:,.0f} | {shared / alone:.2f}x | {shared_wall:,.0f} | "
          f"{shared_wall / alone_wall:.2f}x |")


if __name__ == "__main__":
    main()
