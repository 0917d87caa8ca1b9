"""Serving speed: requests per second and latency of tune.serve's HTTP endpoint, serve.batch on vs off.

    python bench/serve.py                           # CNN and frozen ResNet18 at 224 px, 1/8/32 clients, 10 s each
    python bench/serve.py --clients 1 16 --seconds 20 --models cnn

For each model it deploys the app tune.serve deploys (tune/serve_app.py: one replica, 1 CPU, as the command's
defaults) with batching on (--max-batch-size 16, 10 ms wait) and off (1: each request alone), and sends the
same 500x375 JPEG from N client threads, each over its own keep-alive connection, as fast as answers come.
It times whole HTTP round trips (upload, decode by load_rgb, predict, JSON) after a warm-up; the clients run
on the same machine. Weights are random (speed only), 120 classes (the dog breeds). Needs ray[serve].
"""
# ----------------------------------------------------------------------------- setup
import argparse
import http.client
import io
import json
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dogs.config import resolve  # noqa: E402
from dogs.models import build_model  # noqa: E402

MODELS = {  # name -> config overrides (random weights: speed only)
    "cnn": {"model": "cnn"},
    "frozen resnet18": {"model": "resnet18", "weights": "none", "unfreeze": 0},
}
CLASSES = [f"breed_{i:03d}" for i in range(120)]


def hardware():
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def photo():
    """A 500x375 JPEG that decodes like a photo (smooth shapes on texture), ~40 KB."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(60, 200, (375, 500, 3), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x, y, s = int(rng.integers(0, 450)), int(rng.integers(0, 325)), int(rng.integers(30, 150))
        d.ellipse([x, y, x + s, y + s], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# ----------------------------------------------------------------------------- server
def deploy(name, image_size, max_batch_size):
    """tune.serve's app for a random-weight model, replacing the one deployed before."""
    from ray import serve

    from tune import serve_app

    config = resolve({**MODELS[name], "image_size": image_size, "seed": 0})
    torch.manual_seed(0)
    model = build_model(config, len(CLASSES), load_weights=False)
    serve.run(serve_app.app([(model.state_dict(), config)], CLASSES, {"bench": name}, max_batch_size=max_batch_size),
              name="dogs", route_prefix="/", logging_config={"log_level": "WARNING", "enable_access_log": False})


# ----------------------------------------------------------------------------- clients
def load(port, body, clients, seconds):
    """(requests answered, seconds, latencies in s, batch sizes) of `clients` threads posting `body` for `seconds`."""
    latencies, batches, lock, errors = [], [], threading.Lock(), []
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            conn.request("POST", "/predict?top_k=5", body=body)
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                errors.append(response.status)
                continue
            with lock:
                latencies.append(time.perf_counter() - t)
                batches.append(json.loads(answer)["batch"])
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed: HTTP {sorted(set(errors))}")
    return len(latencies), time.perf_counter() - began, np.array(latencies), np.array(batches)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per cell (after a warm-up)")
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args()

    from ray import serve

    from tune.serve import start_ray

    start_ray(None)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    body = photo()
    print(f"{hardware()}; {len(body) / 1024:.0f} KB JPEG at {args.image_size} px, {args.seconds:g} s per cell",
          flush=True)
    rows = []
    for name in args.models:
        for batch in (16, 1):
            deploy(name, args.image_size, batch)
            load(port, body, 4, 2)   # warm-up: the replica's first batches, the connections
            for clients in args.clients:
                count, took, lat, batches = load(port, body, clients, args.seconds)
                rows.append({"model": name, "serve.batch": "on (16)" if batch > 1 else "off", "clients": clients,
                             "req/s": count / took, "p50 ms": 1000 * np.percentile(lat, 50),
                             "p99 ms": 1000 * np.percentile(lat, 99), "mean batch": batches.mean(),
                             "requests": count})
                print(line(rows[-1]), flush=True)
    serve.shutdown()
    print("\n" + "\n".join([line(HEADER), line({k: "---" for k in HEADER})] + [line(row) for row in rows]))


HEADER = {"model": "model", "serve.batch": "serve.batch", "clients": "clients", "req/s": "req/s", "p50 ms": "p50 ms",
          "p99 ms": "p99 ms", "mean batch": "mean batch", "requests": "requests"}


def line(row):
    """One row of the Markdown table (numbers formatted, the header and rule as given)."""
    def cell(key, spec):
        return format(row[key], spec) if isinstance(row[key], (int, float, np.floating)) else str(row[key])
    return ("| " + " | ".join([cell("model", ""), cell("serve.batch", ""), cell("clients", "d"), cell("req/s", ".1f"),
                               cell("p50 ms", ".0f"), cell("p99 ms", ".0f"), cell("mean batch", ".1f"),
                               cell("requests", "d")]) + " |")


if __name__ == "__main__":
    main()
