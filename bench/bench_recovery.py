"""Time from a gang member failing to the whole gang Running again, on the local control plane.

Prints JSON: per-try seconds, median and max. Each try fails one member of a running
4 x 8-GPU gang (kwok makes the pod exit 1) and waits until the job is Running with its
restart count up by one. Backoff is 0 so the number is the operator's reaction, not policy.

    .venv/bin/python bench/bench_recovery.py --tries 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from kubernetes import client  # noqa: E402

from wanka.cluster.dev import create_nodes  # noqa: E402
from wanka.cluster.devenv import create, devenv  # noqa: E402

NS = "bench"


def status(api: client.ApiClient) -> dict[str, Any]:
    return dict(client.CustomObjectsApi(api).get_namespaced_custom_object(
        "wanka.io", "v1alpha1", NS, "trainingjobs", "gang").get("status") or {})


def wait(check: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wanka-bench-") as tmp, devenv(Path(tmp)) as env:
        api, core = env.api, client.CoreV1Api(env.api)
        create_nodes(api, args.nodes, 8, "H100-80GB", 4, prefix="b", labels={"wanka.io/pool": "bench"})
        create(api, "gpupools", {"apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool",
                                 "metadata": {"name": "bench"}, "spec": {
                                     "nodeSelector": {"matchLabels": {"wanka.io/pool": "bench"}},
                                     "topology": {"levels": ["wanka.io/rack"]}}})
        create(api, "tenantqueues", {"apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue",
                                     "metadata": {"name": NS}, "spec": {
                                         "namespaces": [NS], "quotas": [{"pool": "bench", "gpus": 10000}]}})
        core.create_namespace({"metadata": {"name": NS}})
        wait(lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(NS).items))
        create(api, "trainingjobs", {"apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJob",
                                     "metadata": {"name": "gang"}, "spec": {
                                         "pool": "bench", "queue": NS, "replicas": 4, "resources": {"gpus": 8},
                                         "restartPolicy": {"maxRestarts": 1000, "backoffSeconds": 0,
                                                           "maxBackoffSeconds": 0},
                                         "template": {"spec": {"terminationGracePeriodSeconds": 0, "containers": [
                                             {"name": "t", "image": "trainer:1"}]}}}}, NS)
        wait(lambda: status(api).get("phase") == "Running")
        times = []
        for i in range(args.tries):
            pods = [p for p in core.list_namespaced_pod(NS, label_selector="wanka.io/job=gang").items
                    if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
            victim = sorted(pods, key=lambda p: p.metadata.name)[i % len(pods)]
            start = time.monotonic()
            core.patch_namespaced_pod(victim.metadata.name, NS, {"metadata": {"labels": {"wanka.io/sim": "fail"}}})
            wait(lambda i=i: (s := status(api)).get("restarts") == i + 1 and s.get("phase") == "Running")
            times.append(round(time.monotonic() - start, 3))
    print(json.dumps({
        "benchmark": "member failure -> whole gang Running again",
        "gang": "4 x 8 GPU", "nodes": args.nodes, "tries": args.tries, "seconds": times,
        "median_seconds": statistics.median(times), "max_seconds": max(times),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
