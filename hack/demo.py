"""`make demo`: a local control plane, 16 simulated 8-GPU nodes in 2 racks, a pool, the operator,
then a 4 x 8-GPU training gang that loses a member and resumes from its checkpoint.

Prints the pool and the job as they go and exits 0, leaving nothing running (unless --keep).

`--tidal` (`make demo-tidal`): a tidal day instead. Three 2 x 2-GPU training gangs fill a
16-GPU pool at night; an inference Deployment (a higher PriorityClass, plain pods) scales from 2
to 12 GPU pods in the morning, reclaiming GPUs from training by checkpoint-aware preemption, and
back at night, when the preempted gangs resume from their checkpoints. Prints the figures as JSON
(allocation by phase, inference pods' time to Running, work lost per reclaim, restarts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from wanka.cluster.dev import create_nodes  # noqa: E402
from wanka.cluster.devenv import create, devenv  # noqa: E402
from wanka.cluster.localcluster import ClusterStartError  # noqa: E402
from wanka.cluster.status_cli import render, table  # noqa: E402
from wanka.cluster.tidal import Tidal  # noqa: E402

STATE = REPO / ".wanka"
NS = "team-a"
POOL = {
    "apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool", "metadata": {"name": "h100-a"},
    "spec": {
        "nodeSelector": {"matchLabels": {"wanka.io/pool": "h100-a"}},
        "accelerator": {"resourceName": "nvidia.com/gpu", "model": "H100-80GB", "memoryGiB": 80},
        "topology": {"levels": ["wanka.io/rack"]},
    },
}
QUEUE = {
    "apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue", "metadata": {"name": NS},
    "spec": {"namespaces": [NS], "quotas": [{"pool": "h100-a", "gpus": 64}]},
}
JOB = {
    "apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "llama-7b"},
    "spec": {
        "pool": "h100-a", "queue": NS, "replicas": 4, "resources": {"gpus": 8},
        "topology": {"level": "wanka.io/rack", "mode": "Required"},
        "restartPolicy": {"maxRestarts": 5, "backoffSeconds": 1, "maxBackoffSeconds": 10},
        "template": {"spec": {"terminationGracePeriodSeconds": 5, "containers": [
            {"name": "train", "image": "trainer:1",
             "resources": {"requests": {"cpu": "8", "memory": "64Gi"}}}]}},
    },
}


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def wait(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise SystemExit(f"demo: timed out waiting for {what}")


def job_status(api: client.ApiClient) -> dict[str, Any]:
    tj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "wanka.io", "v1alpha1", NS, "trainingjobs", "llama-7b")
    return dict(tj.get("status") or {})


def show_job(api: client.ApiClient) -> None:
    st = job_status(api)
    print(table(["JOB", "PHASE", "READY", "RESTARTS", "EXCLUDED", "NODES"], [[
        "llama-7b", st.get("phase"), st.get("replicasReady"), st.get("restarts"),
        ",".join(st.get("excludedNodes") or []) or "-",
        ",".join(p["node"] for p in st.get("placement") or []) or "-",
    ]]))


def show_events(api: client.ApiClient) -> None:
    events = client.CoreV1Api(api).list_namespaced_event(NS).items
    rows = [[e.type, e.reason, e.message] for e in sorted(
        (e for e in events if e.involved_object.name == "llama-7b"),
        key=lambda e: (e.first_timestamp or e.event_time or 0, e.metadata.resource_version))]
    print(table(["TYPE", "REASON", "MESSAGE"], rows))


def ensure_namespace(api: client.ApiClient, name: str) -> None:
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def gang_crash(api: client.ApiClient) -> None:
    """A 4 x 8-GPU gang loses a member and resumes from its checkpoint."""
    step("16 simulated nodes with 8 H100 each in 2 racks; GPUPool h100-a; TenantQueue team-a")
    create_nodes(api, 16, 8, "H100-80GB", 2, prefix="gpu", labels={"wanka.io/pool": "h100-a"})
    create(api, "gpupools", POOL)
    create(api, "tenantqueues", QUEUE)
    ensure_namespace(api, NS)
    wait("16 healthy nodes in the pool", lambda: (client.CustomObjectsApi(api).get_cluster_custom_object(
        "wanka.io", "v1alpha1", "gpupools", "h100-a").get("status") or {}).get("nodes", {}).get("healthy") == 16)
    print(render(api))

    step("TrainingJob llama-7b: 4 replicas x 8 GPUs, all in one rack")
    wait("the default ServiceAccount", lambda: _has_default_sa(api, NS))
    create(api, "trainingjobs", JOB, NS)
    wait("the gang to run", lambda: job_status(api).get("phase") == "Running")
    show_job(api)

    pods = client.CoreV1Api(api).list_namespaced_pod(NS, label_selector="wanka.io/job=llama-7b").items
    victim = sorted(pods, key=lambda p: p.metadata.name)[1]
    step(f"replica 1 ({victim.metadata.name} on {victim.spec.node_name}) crashes")
    client.CoreV1Api(api).patch_namespaced_pod(
        victim.metadata.name, NS, {"metadata": {"labels": {"wanka.io/sim": "fail"}}})
    wait("the restart", lambda: job_status(api).get("restarts") == 1)
    show_job(api)
    wait("the gang to run again", lambda: job_status(api).get("phase") == "Running", 90)
    step("the whole gang runs again from its checkpoint (WANKA_RESUME=1), avoiding the bad node")
    show_job(api)
    show_events(api)
    step("pool status")
    print(render(api))


def tidal_day(api: client.ApiClient, json_out: str | None) -> None:
    """Inference scales 2 -> 12 -> 2 pods over three training gangs on 16 GPUs."""
    pool, queue, ns = "tidal-h100", "tidal", "tidal"
    step("2 simulated 8-GPU nodes; GPUPool tidal-h100; TenantQueue tidal (LowerPriority)")
    create_nodes(api, 2, 8, "H100-80GB", 1, prefix="tide", labels={"wanka.io/pool": pool})
    create(api, "gpupools", {"apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool", "metadata": {"name": pool},
                             "spec": {"nodeSelector": {"matchLabels": {"wanka.io/pool": pool}}}})
    create(api, "tenantqueues", {"apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue",
                                 "metadata": {"name": queue},
                                 "spec": {"namespaces": [ns], "quotas": [{"pool": pool, "gpus": 16}],
                                          "preemption": {"withinQueue": "LowerPriority"}}})
    ensure_namespace(api, ns)
    wait("the default ServiceAccount", lambda: _has_default_sa(api, ns))
    wait("2 healthy nodes in the pool", lambda: (client.CustomObjectsApi(api).get_cluster_custom_object(
        "wanka.io", "v1alpha1", "gpupools", pool).get("status") or {}).get("nodes", {}).get("healthy") == 2)
    step("night: three 2 x 2-GPU training gangs and 2 inference pods; morning: inference to 12; "
         "night again: back to 2")
    report = Tidal(api, ns, pool, queue, gangs=3, replicas=2, gpus=2, low=2, high=12, pool_gpus=16,
                   timeout=120).run()
    text = json.dumps(report.wire(), indent=2)
    print(text)
    if json_out:
        Path(json_out).write_text(text + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the cluster and operator running")
    parser.add_argument("--tidal", action="store_true", help="play a tidal day instead (make demo-tidal)")
    parser.add_argument("--json", dest="json_out", default=None, help="with --tidal: also write the figures here")
    args = parser.parse_args()
    step("starting the local control plane (etcd, kube-apiserver, controller-manager, kwok), "
         "the CRDs, and the operator as the Helm chart deploys it (its RBAC, ServiceAccount, args)")
    try:
        env_cm = devenv(STATE, keep=args.keep, via_chart=True)
        env = env_cm.__enter__()
    except ClusterStartError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        api = env.api
        (STATE / "kubeconfig").write_text(env.cluster.kubeconfig.read_text())
        if args.tidal:
            tidal_day(api, args.json_out)
        else:
            gang_crash(api)
        if args.keep:
            log = env.operator.log if env.operator else STATE / "operator.log"
            print(f"\nleft running: export KUBECONFIG={STATE / 'kubeconfig'}; "
                  f"operator log {log}; `make cluster-down` stops the cluster")
        return 0
    finally:
        env_cm.__exit__(None, None, None)
        if not args.keep:
            (STATE / "kubeconfig").unlink(missing_ok=True)
            step("stopped everything")


def _has_default_sa(api: client.ApiClient, namespace: str) -> bool:
    try:
        client.CoreV1Api(api).read_namespaced_service_account("default", namespace)
    except ApiException:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
