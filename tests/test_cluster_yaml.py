"""cluster.yaml, checked offline: Ray's own schema, then what the schema does not check.

Ray's schema check (`prepare_config` + `validate_config`) is private API of Ray 2.60 and needs no
cloud access; if a Ray release moves it, that one test skips and says so. The other checks read
the YAML itself: a region and instance types, GPU workers that declare their GPUs, setup that
installs this project with the same Ray as here, and the secure defaults.
"""
import copy
import re
from pathlib import Path

import pytest
import ray
import yaml

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5")


def load():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def start_commands(cfg):
    return cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]


def problems(cfg):
    """What is wrong with a cluster config, beyond Ray's schema: [] when nothing is."""
    out = []
    nodes = cfg["available_node_types"]
    head = nodes[cfg["head_node_type"]]
    workers = {name: node for name, node in nodes.items() if name != cfg["head_node_type"]}
    setup = " ".join(cfg.get("setup_commands", []))
    # where and on what
    if cfg["provider"].get("type") != "aws" or not cfg["provider"].get("region"):
        out.append("provider: AWS with a region")
    for name, node in nodes.items():
        if not node["node_config"].get("InstanceType") or not node["node_config"].get("ImageId"):
            out.append(f"{name}: InstanceType and ImageId")
    if head.get("resources", {}).get("GPU", 0) or head.get("resources", {}).get("CPU", 1):
        out.append("head: runs no trial (resources CPU 0, GPU 0)")
    gpu_workers = [n for n in workers.values()
                   if n["node_config"].get("InstanceType", "").split(".")[0] in GPU_FAMILIES]
    if not gpu_workers:
        out.append("a GPU worker type")
    for node in gpu_workers:
        if node.get("resources", {}).get("GPU", 0) < 1:
            out.append(f"{node['node_config']['InstanceType']}: declares its GPUs (resources: GPU)")
        if not 0 <= node.get("min_workers", 0) <= node.get("max_workers", -1) <= cfg["max_workers"]:
            out.append("GPU workers: 0 <= min_workers <= max_workers <= max_workers of the cluster")
    # this project, with the Ray of this machine, on every node
    if cfg.get("file_mounts", {}).get("~/dogs-tune") != ".":
        out.append("file_mounts: the project (~/dogs-tune: .)")
    if "-e ~/dogs-tune" not in setup:
        out.append("setup_commands: install the project (-e ~/dogs-tune)")
    if f'"ray[default,tune]=={ray.__version__}"' not in setup:
        out.append(f"setup_commands: pin ray[default,tune]=={ray.__version__}, the Ray of the driver")
    if "/mnt/efs" not in setup:
        out.append("setup_commands: mount the shared storage (EFS at /mnt/efs)")
    # secure defaults
    if cfg["provider"].get("security_group", {}).get("IpPermissions"):
        out.append("security group: no extra inbound rule (Ray adds SSH + intra-cluster only)")
    if "--dashboard-host=127.0.0.1" not in " ".join(cfg["head_start_ray_commands"]):
        out.append("head: dashboard on localhost only (--dashboard-host=127.0.0.1)")
    if "0.0.0.0" in yaml.safe_dump(cfg):
        out.append("nothing binds 0.0.0.0")
    for command in start_commands(cfg):
        if "ray start" in command and "RAY_AUTH_MODE=token ray start" not in command:
            out.append(f"token auth on every node: {command!r}")
    if "export RAY_AUTH_MODE=token" not in setup:
        out.append("token auth for drivers on the nodes (export RAY_AUTH_MODE=token)")
    if cfg.get("file_mounts", {}).get("~/.ray/auth_token") != "~/.ray/auth_token":
        out.append("file_mounts: the cluster's token (~/.ray/auth_token)")
    if "chmod 600 ~/.ray/auth_token" not in setup:
        out.append("setup_commands: the token readable by its user only (chmod 600)")
    return out


def credentials(text):
    """Things in the text that look like secrets."""
    patterns = [r"AKIA[0-9A-Z]{16}", r"aws_secret_access_key", r"aws_session_token", r"RAY_AUTH_TOKEN\s*=",
                r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r"password\s*[:=]", r"\b[0-9a-f]{32,}\b"]
    return [p for p in patterns if re.search(p, text, re.IGNORECASE)]


def test_ray_schema_accepts_cluster_yaml():
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
        import jsonschema  # noqa: F401  (validate_config needs it)
    except ImportError as err:
        pytest.skip(f"Ray's private config validator is not importable here: {err}")
    prepared = prepare_config(load())      # fills Ray's AWS defaults; no cloud call
    validate_config(prepared)
    assert prepared["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1


def test_ray_schema_rejects_a_broken_config():
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
        import jsonschema
    except ImportError as err:
        pytest.skip(f"Ray's private config validator is not importable here: {err}")
    cfg = load()
    cfg["available_node_types"]["gpu_worker"]["max_worker"] = 4      # a typo: not a field
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


def test_cluster_yaml_has_no_problems():
    assert problems(load()) == []


@pytest.mark.parametrize("break_it, expected", [
    (lambda c: c["provider"].pop("region"), "provider: AWS with a region"),
    (lambda c: c["available_node_types"]["gpu_worker"]["resources"].pop("GPU"), "declares its GPUs"),
    (lambda c: c["available_node_types"]["gpu_worker"]["node_config"].pop("InstanceType"), "a GPU worker type"),
    (lambda c: c["available_node_types"]["head"]["node_config"].pop("ImageId"), "head: InstanceType and ImageId"),
    (lambda c: c["setup_commands"].pop(2), "install the project"),
    (lambda c: c["provider"]["security_group"].update(
        IpPermissions=[{"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp",
                        "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]), "no extra inbound rule"),
    (lambda c: c["head_start_ray_commands"].__setitem__(
        1, c["head_start_ray_commands"][1].replace("127.0.0.1", "0.0.0.0")), "dashboard on localhost"),
    (lambda c: c["worker_start_ray_commands"].__setitem__(
        1, c["worker_start_ray_commands"][1].replace("RAY_AUTH_MODE=token ", "")), "token auth on every node"),
    (lambda c: c["setup_commands"].remove("chmod 700 ~/.ray && chmod 600 ~/.ray/auth_token"), "chmod 600"),
])
def test_problems_catches_each_broken_default(break_it, expected):
    cfg = copy.deepcopy(load())
    break_it(cfg)
    assert any(expected in p for p in problems(cfg)), problems(cfg)


def test_no_credentials_in_cluster_yaml():
    assert credentials(CLUSTER_YAML.read_text()) == []
    assert credentials("aws_secret_access_key: wJalrXUtnFEMI/K7MDENG") != []     # the check can fail

