"""`make demo-tidal`: a tidal day on the local control plane. Training gangs fill a 16-GPU pool
at night; an inference Deployment (a higher PriorityClass, plain pods) scales from 2 to 12 GPU
pods in the morning, reclaiming GPUs from training by checkpoint-aware preemption; at night it
scales back and the preempted gangs resume from their checkpoints.

Prints the figures as JSON (allocation by phase, inference pods' time to Running, work lost per
reclaim, restarts) and exits 0, leaving nothing running (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from wanka.cluster.dev import create_nodes  # noqa: E402
from wanka.cluster.devenv import create, devenv  # noqa: E402
from wanka.cluster.localcluster import ClusterStartError  # noqa: E402
from wanka.cluster.tidal import Tidal  # noqa: E402

STATE = REPO / ".wanka"
NS, POOL, QUEUE = "tidal", "tidal-h100", "tidal"


def wait(what: str, check: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise SystemExit(f"demo-tidal: timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the cluster and operator running")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the figures here")
    args = parser.parse_args()
    print("==> local control plane, CRDs and the operator as the Helm chart deploys it", flush=True)
    try:
        env_cm = devenv(STATE, keep=args.keep, via_chart=True)
        env = env_cm.__enter__()
    except ClusterStartError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        api = env.api
        core = client.CoreV1Api(api)
        print("==> 2 simulated 8-GPU nodes; GPUPool tidal-h100; TenantQueue tidal (LowerPriority)", flush=True)
        create_nodes(api, 2, 8, "H100-80GB", 1, prefix="tide", labels={"wanka.io/pool": POOL})
        create(api, "gpupools", {"apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool", "metadata": {"name": POOL},
                                 "spec": {"nodeSelector": {"matchLabels": {"wanka.io/pool": POOL}}}})
        create(api, "tenantqueues", {"apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue",
                                     "metadata": {"name": QUEUE},
                                     "spec": {"namespaces": [NS], "quotas": [{"pool": POOL, "gpus": 16}],
                                              "preemption": {"withinQueue": "LowerPriority"}}})
        try:
            core.create_namespace({"metadata": {"name": NS}})
        except ApiException as exc:
            if exc.status != 409:
                raise
        wait("the default ServiceAccount", lambda: any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(NS).items))
        wait("16 healthy GPUs in the pool", lambda: (client.CustomObjectsApi(api).get_cluster_custom_object(
            "wanka.io", "v1alpha1", "gpupools", POOL).get("status") or {}).get("nodes", {}).get("healthy") == 2)
        print("==> night: three 2 x 2-GPU training gangs and 2 inference pods; morning: inference to 12; "
              "night again: back to 2", flush=True)
        report = Tidal(api, NS, POOL, QUEUE, gangs=3, replicas=2, gpus=2, low=2, high=12, pool_gpus=16,
                       timeout=120).run()
        text = json.dumps(report.wire(), indent=2)
        print(text)
        if args.json_out:
            Path(args.json_out).write_text(text + "\n")
        if args.keep:
            print(f"\nleft running: export KUBECONFIG={env.cluster.kubeconfig}; `make cluster-down` stops it")
        return 0
    finally:
        env_cm.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
