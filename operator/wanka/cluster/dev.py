"""`wanka dev`: the local control plane (up / down) and simulated GPU nodes for it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from wanka.cluster.kube import KUBECONFIG_HELP, api_client
from wanka.cluster.localcluster import KWOK_NODE_ANNOTATION, ClusterStartError, LocalCluster, write_private

DEFAULT_STATE = Path(".wanka")
GPU_MODEL_LABEL = "wanka.io/gpu-model"
RACK_LABEL = "wanka.io/rack"


def node_manifest(
    name: str,
    gpus: int,
    model: str,
    rack: str | None,
    labels: dict[str, str],
    resource: str = "nvidia.com/gpu",
    cpu: str = "128",
    memory: str = "1Ti",
) -> dict[str, Any]:
    """A simulated GPU node, created with its status (kwok keeps what it does not manage)."""
    all_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "type": "kwok",
        GPU_MODEL_LABEL: model,
        **({RACK_LABEL: rack} if rack else {}),
        **labels,
    }
    resources = {"cpu": cpu, "memory": memory, "pods": "110", resource: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": all_labels,
            "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
        },
        "spec": {},
        "status": {"capacity": resources, "allocatable": resources, "phase": "Pending"},
    }


def create_nodes(
    api: client.ApiClient,
    count: int,
    gpus_per_node: int,
    model: str,
    racks: int,
    prefix: str = "gpu",
    labels: dict[str, str] | None = None,
    resource: str = "nvidia.com/gpu",
    start: int = 0,
) -> list[str]:
    """Create (or leave as they are) `count` simulated nodes spread evenly over `racks`."""
    core = client.CoreV1Api(api)
    per_rack = max(1, -(-count // max(racks, 1)))
    names = []
    for i in range(start, start + count):
        name = f"{prefix}-{i}"
        rack = f"rack-{(i - start) // per_rack}" if racks > 0 else None
        body = node_manifest(name, gpus_per_node, model, rack, labels or {}, resource)
        try:
            core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        names.append(name)
    return names


def parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--label wants KEY=VALUE, got {item!r}")
        labels[key] = value
    return labels


def _nodes(args: argparse.Namespace) -> int:
    try:
        labels = parse_labels(args.label)
    except argparse.ArgumentTypeError as exc:
        print(f"wanka dev nodes: {exc}", file=sys.stderr)
        return 2
    api = api_client(args.kubeconfig)
    names = create_nodes(
        api, args.count, args.gpus_per_node, args.model, args.racks, args.prefix, labels,
        args.resource, args.start,
    )
    print(f"{len(names)} nodes: {names[0]} .. {names[-1]}" if names else "no nodes")
    return 0


def _up(args: argparse.Namespace) -> int:
    cluster = LocalCluster(Path(args.state_dir) / "cluster")
    try:
        kubeconfig = cluster.up()
    except ClusterStartError as exc:
        print(f"wanka dev up: {exc}", file=sys.stderr)
        return 1
    target = Path(args.state_dir) / "kubeconfig"
    write_private(target, kubeconfig.read_text())
    print(f"local control plane up; export KUBECONFIG={target.resolve()}")
    return 0


def _down(args: argparse.Namespace) -> int:
    LocalCluster(Path(args.state_dir) / "cluster").down()
    (Path(args.state_dir) / "kubeconfig").unlink(missing_ok=True)
    print("local control plane stopped")
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("dev", help="local control plane and simulated GPU nodes")
    dev = parser.add_subparsers(dest="dev_command", required=True, metavar="DEV_COMMAND")

    up = dev.add_parser("up", help="start etcd, kube-apiserver, controller-manager and kwok")
    up.add_argument("--state-dir", default=str(DEFAULT_STATE),
                    help="PKI, etcd data, logs and kubeconfig go here (default %(default)s)")
    up.set_defaults(func=_up)

    down = dev.add_parser("down", help="stop the local control plane and remove its state")
    down.add_argument("--state-dir", default=str(DEFAULT_STATE), help="what `dev up` used (default %(default)s)")
    down.set_defaults(func=_down)

    nodes = dev.add_parser("nodes", help="create simulated GPU nodes (kwok)")
    nodes.add_argument("--count", type=int, required=True, help="how many nodes")
    nodes.add_argument("--gpus-per-node", type=int, default=8, help="GPUs each node offers (default %(default)s)")
    nodes.add_argument("--model", default="H100-80GB", help="GPU model label (default %(default)s)")
    nodes.add_argument("--racks", type=int, default=1, help="racks to spread them over (default %(default)s)")
    nodes.add_argument("--prefix", default="gpu", help="node name prefix (default %(default)s)")
    nodes.add_argument("--start", type=int, default=0, help="index of the first node")
    nodes.add_argument("--resource", default="nvidia.com/gpu", help="the GPUs' extended resource (default %(default)s)")
    nodes.add_argument("--label", action="append", default=[], metavar="K=V", help="extra node label (repeat)")
    nodes.add_argument("--kubeconfig", default=None, help=KUBECONFIG_HELP)
    nodes.set_defaults(func=_nodes)
