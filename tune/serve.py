"""Serve the model a search found over HTTP with Ray Serve, with a page to try it.

    python -m tune.serve --experiment NAME                # the best trial of runs/NAME on http://127.0.0.1:8000/
    python -m tune.serve --checkpoint out/best.pt         # any checkpoint (dogs.train's too)
    python -m tune.serve --export model/                  # a folder of tune.best --export
    curl --data-binary @photo.jpg 'http://127.0.0.1:8000/predict?top_k=5'
    python -m tune.serve --experiment NAME --address auto --host 0.0.0.0 --gpus-per-replica 0.25   # a Ray cluster

The request body is the image's bytes (not a form); the answer is JSON (tune/serve_app.py). The model is
sent to each replica whole (its frozen backbone included), so replicas on other nodes need no file of it.
"""
import ipaddress
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from dogs.cli import ArgumentParser, fail, number
from dogs.errors import UserError
from tune.storage import DEFAULT_STORAGE
from tune.ray_setup import start_ray

PROG = "dogs-serve"
MAX_BATCH_WAIT_MS = 60_000   # a batch that waits longer than a minute for company only delays every answer


def get_args_parser():
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], examples=__doc__.split("\n\n")[1],
                       groups=("model", "server", "resources"))
    which, server, resources = p.groups.values()
    model = which.add_mutually_exclusive_group()
    model.add_argument("--experiment", help="experiment folder or URI, or its name in --storage: its best trial, as "
                                            "tune.best picks it (default: the latest experiment in --storage)")
    model.add_argument("--checkpoint", help="a checkpoint file (best.pt of dogs.train, checkpoint.pt of a trial) "
                                            "instead of an experiment's best trial")
    model.add_argument("--export", metavar="DIR", help="a folder written by tune.best --export (its "
                                                       "model.safetensors) instead of an experiment's best trial")
    server.add_argument("--tta", action="store_true", help="average each prediction over the image and its horizontal "
                                                       "mirror, as tune.best --predict --tta (twice the compute)")
    server.add_argument("--ensemble", type=number(int, 1), default=1, metavar="K",
                   help="average the softmax of the experiment's K best trials, as tune.best --predict --ensemble "
                        "(default 1)")
    which.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"where experiments are, as tune.search --storage (default {DEFAULT_STORAGE})")
    server.add_argument("--host", default="127.0.0.1",
                   help="address the HTTP server listens on (default 127.0.0.1: this machine only; 0.0.0.0: every "
                        "network this machine is on, with a warning)")
    server.add_argument("--port", type=number(int, 1, 65535), default=8000, help="HTTP port (default 8000)")
    resources.add_argument("--address", help="join the Ray cluster at this address (auto: the one started on this machine "
                                     "by `ray start`); default: start a Ray of its own on 127.0.0.1")
    resources.add_argument("--gpus-per-replica", type=number(float, 0), default=0.0, metavar="G",
                   help="share of a GPU each replica gets (0.25: four replicas per GPU); default 0: on CPUs")
    resources.add_argument("--replicas", type=number(int, 1),
                   help="number of copies of the model (default: as many as the cluster's GPUs allow with "
                        "--gpus-per-replica, else 1)")
    resources.add_argument("--cpus-per-replica", type=number(float, 0), default=1.0, metavar="C", help="CPUs each replica reserves "
                                                                                    "(default 1)")
    server.add_argument("--max-batch-size", type=number(int, 1), default=16,
                   help="requests predicted together at most (serve.batch; default 16; 1: each alone, no batching)")
    server.add_argument("--batch-wait-ms", type=number(float, 0, MAX_BATCH_WAIT_MS), default=10.0,
                        help="how long a batch waits for more requests before it runs (default 10 ms, at most "
                             f"{MAX_BATCH_WAIT_MS})")
    server.add_argument("--max-upload-mb", type=number(float, 0, low_open=True), default=20.0,
                   help="larger uploads are refused with HTTP 413 (default 20 MB)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        return serve(args)
    except UserError as err:
        fail(PROG, err)


def check_args(args):
    """Refuse combinations Serve would take and misbehave with: one line each (each flag's own range is its
    argparse type, dogs.cli.number)."""
    if args.gpus_per_replica > 1 and args.gpus_per_replica != int(args.gpus_per_replica):
        raise UserError(f"--gpus-per-replica {args.gpus_per_replica}: above 1, give a whole number of GPUs")
    if args.ensemble > 1 and (args.checkpoint or args.export):
        raise UserError("--ensemble K averages the K best trials of an experiment: not with --checkpoint or --export")


def host_warning(host):
    """A warning when `host` is not a loopback address: the server then answers anyone who can reach it."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (f"{PROG}: warning: --host {host}: the model answers anyone who can reach this machine on that address "
            "(no authentication, no TLS); keep it behind a firewall or a proxy that has them")


def load_model(args):
    """([(model, checkpoint dict)], source): --export, --checkpoint, or the best trial of the experiment (and the
    next --ensemble - 1), as tune.best picks and checks them (tune.best.load_members); `source` says which."""
    from tune.best import load_members

    if args.export:
        model, ckpt, source = load_export(args.export)
        return [(model, ckpt)], source
    return load_members(args.experiment, args.storage, args.checkpoint, args.ensemble)


def load_export(folder):
    """(model, {"config", "classes"}, source) of a tune.best --export folder: the whole network from its
    model.safetensors (its config and classes are in the file's metadata)."""
    from dogs.config import resolve
    from dogs.export import CARD, FORMAT, is_export
    from dogs.models import build_model

    path = Path(folder, "model.safetensors")
    if not is_export(folder) or not path.is_file():
        raise UserError(f"--export {folder}: not a folder written by tune.best --export (it needs {CARD} of "
                        f"{FORMAT} and model.safetensors)")
    try:
        from safetensors import safe_open
    except ImportError:
        raise UserError("--export needs safetensors: pip install -e '.[export]'") from None
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            weights = {key: f.get_tensor(key) for key in f.keys()}
        config, classes = resolve(json.loads(meta["config"])), json.loads(meta["classes"])
        model = build_model(config, len(classes), load_weights=False)
        model.load_state_dict(weights)
    except Exception as err:   # damaged, another version's config, or weights that do not fit it
        reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"--export {folder}: {path.name} cannot be loaded ({type(err).__name__}: {reason})") \
            from None
    return model.eval(), {"config": config, "classes": classes}, {"export": os.path.abspath(folder)}


def describe(source):
    """The source of load_model in words: the export folder, the checkpoint file, or the trial of its experiment."""
    if "trial" in source:
        return f"trial {source['trial']} of {source['experiment']}"
    return source.get("export") or source.get("checkpoint")


def replica_count(args, resources, fixed=True):
    """--replicas, or as many replicas as the cluster's GPUs hold at --gpus-per-replica each (1 on CPUs).

    On a `fixed` cluster (the local Ray) replicas that do not fit are refused: Serve would keep them pending.
    A cluster joined may grow (its autoscaler), so there only one replica must fit."""
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    if args.gpus_per_replica > gpus:
        raise UserError(f"--gpus-per-replica {args.gpus_per_replica:g}, but the Ray cluster has {gpus:g} GPU(s): "
                        "give less, or 0 to serve on CPUs")
    if args.replicas is None:
        return max(1, int(gpus // args.gpus_per_replica)) if args.gpus_per_replica else 1
    need = {"GPU": args.replicas * args.gpus_per_replica, "CPU": args.replicas * args.cpus_per_replica}
    short = [f"{need[k]:g} {k}s (it has {have:g})" for k, have in (("GPU", gpus), ("CPU", cpus)) if need[k] > have]
    if fixed and short:
        raise UserError(f"--replicas {args.replicas} need {' and '.join(short)} on this machine: give fewer "
                        "replicas, or less --gpus-per-replica / --cpus-per-replica")
    return args.replicas


def check_port(host, port):
    """Refuse a port this machine already serves on (another server, an earlier tune.serve), before Ray starts:
    Serve's proxy could not listen there."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as err:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err}): another server "
                        "(an earlier tune.serve?) has it, or the address is not this machine's; give another --port")


def stop(signum, frame):
    """SIGTERM ends the server as Ctrl-C does: Serve and the local Ray shut down."""
    raise KeyboardInterrupt


def serve(args):
    """Load the model, start Ray and Serve, deploy, and serve until Ctrl-C (on a cluster joined: until
    `serve shutdown`)."""
    check_args(args)
    warning = host_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    try:
        from ray import serve as ray_serve
    except ImportError:
        raise UserError("Ray Serve is not installed: pip install -e '.[serve]'") from None
    from tune import serve_app

    # the model(s), whole, with what a replica needs to predict as Validation is scored
    members, source = load_model(args)
    config, classes = members[0][1]["config"], list(members[0][1]["classes"])
    local = not (args.address or os.environ.get("RAY_ADDRESS"))
    if local:
        check_port(args.host, args.port)
    resources = start_ray(args.address, verbose=True, who="server")   # Ray's own lines, as a server's log
    replicas = replica_count(args, resources, fixed=local)

    # Serve's HTTP proxy on --host:--port of the head node (a GPU worker's may come and go), the replicas behind it
    ray_serve.start(proxy_location="HeadOnly", http_options={"host": args.host, "port": args.port})
    ray_serve.run(serve_app.app([(model.state_dict(), ckpt["config"]) for model, ckpt in members], classes, source,
                                replicas=replicas, gpus=args.gpus_per_replica, cpus=args.cpus_per_replica,
                                max_batch_size=args.max_batch_size, batch_wait_s=args.batch_wait_ms / 1000,
                                max_upload_bytes=int(args.max_upload_mb * 2**20), tta=args.tta),
                  name="dogs", route_prefix="/")
    shown = f"[{args.host}]" if ":" in args.host else args.host
    tta = (f", ensemble of {len(members)}" if len(members) > 1 else "") + (", mirror TTA" if args.tta else "")
    print(f"Serving {config['model']} ({len(classes)} classes, {describe(source)}{tta}) with {replicas} replica(s) "
          f"at http://{shown}:{args.port}/", flush=True)
    print(f"  curl --data-binary @photo.jpg 'http://{shown}:{args.port}/predict?top_k=5'", flush=True)
    if not local:
        print("It keeps serving on the cluster after this command ends: `serve shutdown` stops it.")
        return 0
    signal.signal(signal.SIGTERM, stop)
    try:
        while True:   # the local Ray, and the server in it, live as long as this process
            time.sleep(3600)
    except KeyboardInterrupt:
        print("Stopping the server")
        ray_serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
