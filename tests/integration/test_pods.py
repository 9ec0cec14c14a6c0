"""Plain Pods, pod groups, Deployments and batch Jobs under Wanka's queues, on a real API server
(kwok plays the kubelets; the controller-manager runs Deployments and Jobs)."""

from __future__ import annotations

import uuid
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import Cluster, OperatorProcess, holds, wait_for
from tests.integration.jobkit import Fleet, make_fleet

PIN_ENV = {"name": "NVIDIA_VISIBLE_DEVICES",
           "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['wanka.io/visible-devices']"}}}


def pod_body(name: str, fleet: Fleet, gpus: int = 1, annotations: dict[str, str] | None = None,
             labels: dict[str, str] | None = None, env: list[dict[str, Any]] | None = None,
             queue: str | None = None) -> dict[str, Any]:
    lab = {"wanka.io/queue": queue or fleet.queue, "wanka.io/pool": fleet.pool, **(labels or {})}
    container: dict[str, Any] = {"name": "app", "image": "app:1", "env": env or []}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": lab, "annotations": annotations or {}},
            "spec": {"schedulerName": "wanka", "terminationGracePeriodSeconds": 1, "containers": [container]}}


def read(cluster: Cluster, namespace: str, name: str) -> Any:
    return cluster.core.read_namespaced_pod(name, namespace)


def node_of(cluster: Cluster, namespace: str, name: str) -> str | None:
    try:
        return str(read(cluster, namespace, name).spec.node_name or "") or None
    except ApiException:
        return None


def scheduled(cluster: Cluster, namespace: str, name: str) -> Any:
    for c in read(cluster, namespace, name).status.conditions or []:
        if c.type == "PodScheduled":
            return c
    return None


def unschedulable(cluster: Cluster, namespace: str, name: str, words: str) -> bool:
    c = scheduled(cluster, namespace, name)
    print(name, node_of(cluster, namespace, name), c and (c.status, c.reason, c.message))  # shown on failure
    return bool(c and c.status == "False" and c.reason == "Unschedulable" and words in (c.message or ""))


def test_whole_and_fraction_pods_are_bound_and_pinned(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    whole = make_fleet(cluster, namespace, nodes=2, racks=1)
    shared = make_fleet(cluster, namespace, nodes=1, racks=1, sharing={"mode": "MPS"})
    cluster.core.create_namespaced_pod(namespace, pod_body("whole", whole, gpus=2))
    cluster.core.create_namespaced_pod(namespace, pod_body(
        "slice", shared, gpus=0, annotations={"wanka.io/gpu-fraction": "0.25", "wanka.io/gpu-memory-gib": "10"},
        env=[PIN_ENV]))
    # Without the downward-API pin a slice would see every device of its node: refused.
    cluster.core.create_namespaced_pod(namespace, pod_body(
        "unpinned", shared, gpus=0, annotations={"wanka.io/gpu-fraction": "0.5"}))

    wait_for(lambda: node_of(cluster, namespace, "whole"), 30, what="the whole-GPU pod bound")
    pod = read(cluster, namespace, "whole")
    assert pod.spec.node_name in whole.nodes
    # A lone pod on whole devices is bound in one write: the binding is its ledger (the
    # device plugin picks its devices), so nothing is reserved on it first.
    notes = pod.metadata.annotations or {}
    assert "wanka.io/node" not in notes and "wanka.io/devices" not in notes
    assert "Scheduled" in [e.reason for e in cluster.events_for("whole", namespace)]
    # What the binding holds is counted: 2 of the 16 devices are taken, so of two 8-device
    # pods one is bound and the other waits for capacity.
    for name in ("big-0", "big-1"):
        cluster.core.create_namespaced_pod(namespace, pod_body(name, whole, gpus=8))
    wait_for(lambda: [bool(node_of(cluster, namespace, n)) for n in ("big-0", "big-1")].count(True) == 1
             and any(unschedulable(cluster, namespace, n, "Capacity") for n in ("big-0", "big-1")), 30,
             what="one 8-device pod bound beside the 2-device one, the other waiting on Capacity")

    wait_for(lambda: node_of(cluster, namespace, "slice"), 30, what="the slice pod bound")
    notes = read(cluster, namespace, "slice").metadata.annotations
    index = notes["wanka.io/visible-devices"]
    assert notes["wanka.io/devices"] == f"{index}:250"
    assert notes["wanka.io/mps-thread-percentage"] == "25"
    assert notes["wanka.io/mps-memory-limit"] == f"{index}=10240M"

    wait_for(lambda: unschedulable(cluster, namespace, "unpinned", "NotPinnable"), 30,
             what="the unpinned slice pod refused with its reason")
    assert node_of(cluster, namespace, "unpinned") is None
    assert "metadata.annotations['wanka.io/visible-devices']" in scheduled(cluster, namespace, "unpinned").message


def test_over_quota_pod_waits_with_its_reason_and_runs_when_quota_frees(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1, quota=8)
    cluster.core.create_namespaced_pod(namespace, pod_body("first", fleet, gpus=8))
    wait_for(lambda: node_of(cluster, namespace, "first"), 30, what="the first pod bound")
    cluster.core.create_namespaced_pod(namespace, pod_body("second", fleet, gpus=4))
    # A pod with a queue that does not exist must not stall anyone: it waits with its reason.
    cluster.core.create_namespaced_pod(namespace, pod_body("lost", fleet, gpus=1, queue="no-such-queue"))
    cluster.core.create_namespaced_pod(namespace, {**pod_body("nolabels", fleet, gpus=1),
                                                   "metadata": {"name": "nolabels"}})
    wait_for(lambda: unschedulable(
        cluster, namespace, "second", f"Quota: the cohort of pool {fleet.pool} has 0 GPUs of unused quota"),
             30, what="the over-quota pod's reason")
    wait_for(lambda: unschedulable(cluster, namespace, "lost", "TenantQueue no-such-queue does not exist"),
             30, what="the unknown queue's reason")
    wait_for(lambda: unschedulable(cluster, namespace, "nolabels", "wanka.io/queue"), 30,
             what="the unlabelled pod's reason")
    assert "FailedScheduling" in [e.reason for e in cluster.events_for("second", namespace)]
    holds(lambda: node_of(cluster, namespace, "second") is None, 2, what="the over-quota pod stays pending")

    cluster.core.create_namespaced_pod(namespace, pod_body("other", make_fleet(cluster, namespace, nodes=1),
                                                           gpus=1))
    wait_for(lambda: node_of(cluster, namespace, "other"), 30, what="another pool's pod bound regardless")

    cluster.core.delete_namespaced_pod("first", namespace, grace_period_seconds=0)
    wait_for(lambda: node_of(cluster, namespace, "second"), 30, what="the waiting pod bound once quota frees")
    assert scheduled(cluster, namespace, "second").status == "True"


def test_pod_group_is_bound_all_at_once_or_not_at_all(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=4, racks=2)
    cluster.core.create_namespaced_pod(namespace, pod_body("blocker", fleet, gpus=8))
    wait_for(lambda: node_of(cluster, namespace, "blocker"), 30, what="the blocker bound")
    group = {"wanka.io/pod-group": "ring"}
    size = {"wanka.io/pod-group-size": "4"}
    for i in range(3):
        cluster.core.create_namespaced_pod(namespace, pod_body(f"ring-{i}", fleet, gpus=8, labels=group,
                                                                annotations=size))
    wait_for(lambda: unschedulable(cluster, namespace, "ring-0", "3 of its 4 members"), 30,
             what="an incomplete group waiting for its members")
    cluster.core.create_namespaced_pod(namespace, pod_body("ring-3", fleet, gpus=8, labels=group,
                                                            annotations=size))
    # Four members, three free nodes: nothing of it is bound.
    wait_for(lambda: unschedulable(cluster, namespace, "ring-3", "Capacity"), 30, what="the group waiting on capacity")
    holds(lambda: all(node_of(cluster, namespace, f"ring-{i}") is None for i in range(4)), 3,
          what="no member bound while the group cannot be placed whole")

    cluster.core.delete_namespaced_pod("blocker", namespace, grace_period_seconds=0)
    wait_for(lambda: all(node_of(cluster, namespace, f"ring-{i}") for i in range(4)), 30,
             what="every member bound")
    nodes = {node_of(cluster, namespace, f"ring-{i}") for i in range(4)}
    assert len(nodes) == 4


def test_deployment_scales_up_and_down(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1, quota=16)
    apps = client.AppsV1Api(cluster.api)
    template = pod_body("x", fleet, gpus=4)
    template["metadata"] = {"labels": {**template["metadata"]["labels"], "app": "serve"}}
    apps.create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "serve"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "serve"}}, "template": template}})

    def bound() -> list[str]:
        pods = cluster.core.list_namespaced_pod(namespace, label_selector="app=serve").items
        return [p.spec.node_name for p in pods if p.spec.node_name and p.metadata.deletion_timestamp is None]

    wait_for(lambda: len(bound()) == 2, 40, what="two replicas bound")
    apps.patch_namespaced_deployment_scale("serve", namespace, {"spec": {"replicas": 5}})
    wait_for(lambda: len(bound()) == 4, 40, what="four replicas bound (16 GPUs)")
    pods = cluster.core.list_namespaced_pod(namespace, label_selector="app=serve").items
    waiting = [p.metadata.name for p in pods if not p.spec.node_name]
    assert len(waiting) == 1
    wait_for(lambda: unschedulable(cluster, namespace, waiting[0], "Quota"), 30, what="the fifth replica's reason")
    apps.patch_namespaced_deployment_scale("serve", namespace, {"spec": {"replicas": 1}})
    wait_for(lambda: len(bound()) == 1, 40, what="scaled down to one")
    apps.patch_namespaced_deployment_scale("serve", namespace, {"spec": {"replicas": 3}})
    wait_for(lambda: len(bound()) == 3, 40, what="scaled up again into the freed GPUs")


def test_indexed_job_is_admitted_as_one_gang(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    fleet = make_fleet(cluster, namespace, nodes=4, racks=2, quota=32)
    batch = client.BatchV1Api(cluster.api)
    template = pod_body("x", fleet, gpus=8)
    template["metadata"] = {"labels": {}}
    template["spec"]["restartPolicy"] = "Never"
    name = f"idx-{uuid.uuid4().hex[:4]}"

    def job_body(job: str) -> dict[str, Any]:
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": job, "labels": {"wanka.io/queue": fleet.queue, "wanka.io/pool": fleet.pool}},
                "spec": {"suspend": True, "parallelism": 4, "completions": 4, "completionMode": "Indexed",
                         "template": template}}

    batch.create_namespaced_job(namespace, job_body(name))

    def job_pods(job: str) -> list[Any]:
        return [p for p in cluster.core.list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items
            if p.metadata.deletion_timestamp is None]

    wait_for(lambda: len([p for p in job_pods(name) if p.spec.node_name]) == 4, 60, what="four pods bound")
    placed = batch.read_namespaced_job(name, namespace)
    assert placed.spec.suspend is False
    assert "wanka.io/placement" in placed.metadata.annotations
    assert len({p.spec.node_name for p in job_pods(name)}) == 4
    assert "Admitted" in [e.reason for e in cluster.events_for(name, namespace)]

    # A second Job of 4 does not fit beside it: it stays suspended, with no pod at all.
    other = f"{name}-b"
    batch.create_namespaced_job(namespace, job_body(other))
    wait_for(lambda: "FailedScheduling" in [e.reason for e in cluster.events_for(other, namespace)], 30,
             what="the second Job's reason")
    holds(lambda: batch.read_namespaced_job(other, namespace).spec.suspend and not job_pods(other), 2,
          what="the second Job stays suspended")


def test_a_preempted_batch_job_is_suspended_and_resumes(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=1, racks=1, quota=8,
                       queue_spec={"preemption": {"withinQueue": "LowerPriority"}})
    scheduling = client.SchedulingV1Api(cluster.api)
    try:
        scheduling.create_priority_class({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                          "metadata": {"name": "wanka-test-high"}, "value": 500})
    except ApiException as exc:
        if exc.status != 409:
            raise
    batch = client.BatchV1Api(cluster.api)
    template = pod_body("x", fleet, gpus=8)
    template["metadata"] = {"labels": {}}
    template["spec"]["restartPolicy"] = "Never"
    batch.create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "sweep", "labels": {"wanka.io/queue": fleet.queue, "wanka.io/pool": fleet.pool}},
        "spec": {"suspend": True, "parallelism": 1, "completions": 1, "template": template}})

    def job_pods() -> list[Any]:
        return [p for p in cluster.core.list_namespaced_pod(
            namespace, label_selector="batch.kubernetes.io/job-name=sweep").items
            if p.metadata.deletion_timestamp is None and p.spec.node_name]

    wait_for(lambda: len(job_pods()) == 1, 40, what="the Job's pod bound")
    urgent = pod_body("urgent", fleet, gpus=8)
    urgent["spec"]["priorityClassName"] = "wanka-test-high"
    cluster.core.create_namespaced_pod(namespace, urgent)
    wait_for(lambda: batch.read_namespaced_job("sweep", namespace).spec.suspend, 30, what="the Job suspended")
    assert "wanka.io/placement" not in (batch.read_namespaced_job("sweep", namespace).metadata.annotations or {})
    wait_for(lambda: node_of(cluster, namespace, "urgent"), 30, what="the urgent pod bound in its place")
    assert "Preempted" in [e.reason for e in cluster.events_for("sweep", namespace)]
    cluster.core.delete_namespaced_pod("urgent", namespace, grace_period_seconds=0)
    wait_for(lambda: not batch.read_namespaced_job("sweep", namespace).spec.suspend and len(job_pods()) == 1, 40,
             what="the Job admitted again")
