"""A real multi-node Ray cluster on one machine, for tests: a head and worker nodes on 127.0.0.1.

Each node is its own `ray start --block` process in its own session (process group) with its own
temp dir, so a test can kill one node (SIGKILL to its whole group, like a machine that dies) and can
stop everything it started without `ray stop`, which would also stop other people's Ray on this host.
Token authentication is on by default: every node and every driver gets RAY_AUTH_MODE=token and a
private (0600) token file of this cluster (`LocalCluster(auth="disabled")`: no token, like a plain
`ray start`). Every process also gets RAY_TMPDIR=<the cluster's folder>, so Ray's default temp dir (and
its "current cluster" address file, ray/ray_current_cluster) is the cluster's, never the user's /tmp/ray.
"""
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))

# Declare a dead node after ~2-3 s instead of Ray's default ~15 s (the head's GCS health check).
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "4",
}


# Ray turns 127.0.0.1 into the host's public IP (so that other machines could reach the node) and then
# listens on every interface. Tests want the opposite: every node and driver on 127.0.0.1, listening on
# loopback only. The head and the drivers get that from Ray's single-machine switch below. A worker node
# refuses to start under that switch, so it runs `ray start` through this file (see the bottom), which
# only stops Ray from replacing 127.0.0.1.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """`with LocalCluster() as c:` starts a head (c.add_node(head=True)); c.address is for --address."""

    def __init__(self, root=None, auth="token"):
        # A short root: Ray's unix sockets live under it and must stay under ~100 characters.
        self.root = Path(root or tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self.auth = auth
        self.token_path = self.root / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.nodes = {}            # name -> Popen of its `ray start --block`
        self.temp_dirs = {}        # name -> its temp dir
        self.address = None

    # -- environment -------------------------------------------------------------------------
    def env(self, **extra):
        """Environment for any process that joins this cluster (nodes and drivers)."""
        env = dict(os.environ)
        env.update(RAY_AUTH_MODE=self.auth, RAY_TMPDIR=str(self.root),
                   RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", **LOOPBACK_ONLY)
        if self.auth == "token":
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        else:
            env.pop("RAY_AUTH_TOKEN_PATH", None)
        env.pop("RAY_AUTH_TOKEN", None)
        env.pop("RAY_ADDRESS", None)
        env.update(extra)
        return env

    # -- nodes -------------------------------------------------------------------------------
    def add_node(self, name, head=False, num_cpus=1, resources=None, env=None, default_temp_dir=False,
                 wait_s=60):
        """Start node `name`; `resources`: its custom resources; `env`: extra variables for its processes.

        `default_temp_dir`: no --temp-dir, as a user's `ray start` (Ray's default, <RAY_TMPDIR>/ray).
        """
        temp_dir = self.root / ("ray" if default_temp_dir else name)
        temp_dir.mkdir(exist_ok=default_temp_dir)
        self.temp_dirs[name] = temp_dir
        cmd = ["start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
               *([] if default_temp_dir else [f"--temp-dir={temp_dir}"]),
               f"--num-cpus={num_cpus}", "--num-gpus=0",
               f"--resources={json.dumps(resources or {})}",
               "--object-store-memory=100000000",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--metrics-export-port={free_port()}"]
        if head:
            port = free_port()
            cmd = [RAY] + cmd + ["--head", f"--port={port}",
                    "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}"]
            self.address = f"127.0.0.1:{port}"
            node_env = self.env(**FAST_FAILURE_DETECTION, **(env or {}))
        else:
            cmd = [sys.executable, __file__] + cmd + [f"--address={self.address}"]
            node_env = self.env(**(env or {}))
            for key in LOOPBACK_ONLY:
                node_env.pop(key)
        log = open(self.root / f"{name}.log", "wb")
        self.nodes[name] = subprocess.Popen(cmd, env=node_env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.wait_for_nodes(len(self.alive_names()), wait_s)
        return self.wait_for_node_id(name, wait_s)

    def alive_names(self):
        return [n for n, p in self.nodes.items() if p.poll() is None]

    def node_table(self):
        """[{NodeID, Alive, Resources, ...}] as the GCS sees it, asked from a throwaway driver."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR');"
                "print('NODES=' + json.dumps(ray.nodes()))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env(), capture_output=True,
                             text=True, timeout=60)
        for line in out.stdout.splitlines():
            if line.startswith("NODES="):
                return json.loads(line[len("NODES="):])
        raise RuntimeError(f"could not list nodes:\n{out.stdout}\n{out.stderr}")

    def wait_for_nodes(self, count, wait_s=60):
        deadline = time.time() + wait_s
        while time.time() < deadline:
            for name, proc in self.nodes.items():
                if proc.poll() is not None and name in self.alive_names():
                    raise RuntimeError(f"node {name} exited: {self.log(name)}")
            try:
                if sum(n["Alive"] for n in self.node_table()) >= count:
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{count} nodes not up after {wait_s}s; head log:\n{self.log('head')}")

    def wait_for_node_id(self, name, wait_s=60):
        """The node id of node `name` once the GCS lists it (a node killed just before may still count)."""
        deadline = time.time() + wait_s
        while True:
            try:
                return self.node_id(name)
            except LookupError:
                if time.time() > deadline or self.nodes[name].poll() is not None:
                    raise
            time.sleep(0.5)

    def node_id(self, name):
        """The node id of node `name`, found by its temp dir's raylet."""
        for node in self.node_table():
            if node["Alive"] and f"{self.temp_dirs[name]}/" in node.get("ObjectStoreSocketName", ""):
                return node["NodeID"]
        raise LookupError(f"node {name} not in the node table")

    def log(self, name):
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def listening_addresses(self):
        """{IP address} of every TCP socket that a process of this cluster listens on."""
        pids = [pid for pid in _all_pids() if _session_of(pid) in {p.pid for p in self.nodes.values()}]
        inodes = set()
        for pid in pids:
            try:
                links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            except OSError:
                continue
            inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
        return {ip for ip, inode in _listening_sockets() if inode in inodes}

    # -- faults and cleanup ------------------------------------------------------------------
    def kill_node(self, name):
        """SIGKILL every process of node `name`, at once, as if its machine lost power."""
        proc = self.nodes[name]
        _kill_session(proc.pid)
        proc.wait(timeout=30)

    def stop(self):
        """Kill every process this cluster started (workers first, head last) and wait for them."""
        for name in reversed(list(self.nodes)):
            _kill_session(self.nodes[name].pid)
            self.nodes[name].wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _kill_session(sid):
    """SIGKILL the process group `sid` and anything else still in session `sid`."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.time() + 10
    while time.time() < deadline:
        left = [pid for pid in _all_pids() if _session_of(pid) == sid]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _listening_sockets():
    """[(IP address, socket inode)] of every listening TCP socket on this machine, from /proc/net."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":          # LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            # the kernel prints each 32-bit word of the address in host (little-endian) order
            ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
            out.append((ip, fields[9]))
    return out


def is_loopback(ip):
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def _all_pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _session_of(pid):
    """Session id of a live process; None for a gone one or a zombie (dead, only not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return None if state in ("Z", "X") else os.getsid(pid)
    except OSError:
        return None


if __name__ == "__main__":
    # `python tests/ray_cluster.py start ...` is `ray start ...` that keeps 127.0.0.1 as the node's IP.
    import ray._private.services
    from ray.scripts.scripts import main

    assert hasattr(ray._private.services, "resolve_ip_for_localhost"), "Ray moved it: update this launcher"
    ray._private.services.resolve_ip_for_localhost = lambda host: host
    sys.exit(main())
