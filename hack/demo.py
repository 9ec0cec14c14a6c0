"""`make demo`: a local control plane, 16 simulated 8-GPU nodes in 2 racks, a pool, the operator.

Prints the pool as a table and exits 0, leaving nothing running (unless --keep).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from wanka.cluster.dev import create_nodes  # noqa: E402
from wanka.cluster.kube import api_client  # noqa: E402
from wanka.cluster.localcluster import ClusterStartError, LocalCluster, free_port  # noqa: E402
from wanka.cluster.status_cli import render  # noqa: E402

STATE = REPO / ".wanka"
POOL = {
    "apiVersion": "wanka.io/v1alpha1",
    "kind": "GPUPool",
    "metadata": {"name": "h100-a"},
    "spec": {
        "nodeSelector": {"matchLabels": {"wanka.io/pool": "h100-a"}},
        "accelerator": {"resourceName": "nvidia.com/gpu", "model": "H100-80GB", "memoryGiB": 80},
        "topology": {"levels": ["wanka.io/rack"]},
    },
}


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def install_crds(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    for path in sorted((REPO / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
    for path in sorted((REPO / "crds").glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        for _ in range(100):
            crd = ext.read_custom_resource_definition(name)
            if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                break
            time.sleep(0.1)


def wait_pool(api: client.ApiClient, want_total: int, timeout: float = 30) -> dict[str, object]:
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool = custom.get_cluster_custom_object("wanka.io", "v1alpha1", "gpupools", "h100-a")
        if ((pool.get("status") or {}).get("gpus") or {}).get("total") == want_total:
            return dict(pool)
        time.sleep(0.3)
    raise SystemExit(f"the pool did not report {want_total} GPUs within {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the cluster and operator running")
    args = parser.parse_args()

    cluster = LocalCluster(STATE / "cluster")
    operator: subprocess.Popen[bytes] | None = None
    step("starting the local control plane (etcd, kube-apiserver, controller-manager, kwok)")
    try:
        kubeconfig = cluster.up()
    except ClusterStartError as exc:
        print(exc, file=sys.stderr)
        return 1
    (STATE / "kubeconfig").write_text(kubeconfig.read_text())
    try:
        api = api_client(kubeconfig)
        step("installing the CRDs from crds/")
        install_crds(api)
        step("creating 16 simulated nodes with 8 H100 each, in 2 racks")
        create_nodes(api, 16, 8, "H100-80GB", 2, prefix="gpu", labels={"wanka.io/pool": "h100-a"})
        step("creating GPUPool h100-a")
        try:
            client.CustomObjectsApi(api).create_cluster_custom_object(
                "wanka.io", "v1alpha1", "gpupools", POOL)
        except ApiException as exc:
            if exc.status != 409:
                raise
        step("starting the operator (wanka run)")
        log = open(STATE / "operator.log", "ab")  # noqa: SIM115 - the child owns it
        env = dict(os.environ, PYTHONPATH=str(REPO / "operator"))
        operator = subprocess.Popen(
            [sys.executable, "-m", "wanka.cli", "run", "--kubeconfig", str(kubeconfig),
             "--metrics-port", str(free_port()), "--health-port", str(free_port()),
             "--metrics-addr", "127.0.0.1", "--health-addr", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=args.keep,
        )
        wait_pool(api, 128)
        step("pool status")
        print(render(api))
        if args.keep:
            print(f"\nleft running; export KUBECONFIG={STATE / 'kubeconfig'}; operator pid "
                  f"{operator.pid}, log {STATE / 'operator.log'}; `make cluster-down` stops it")
        return 0
    finally:
        if not args.keep:
            if operator is not None:
                operator.terminate()
                try:
                    operator.wait(15)
                except subprocess.TimeoutExpired:
                    operator.kill()
            cluster.down()
            (STATE / "kubeconfig").unlink(missing_ok=True)
            step("stopped everything")


if __name__ == "__main__":
    sys.exit(main())
