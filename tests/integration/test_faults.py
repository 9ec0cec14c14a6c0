"""Faults a real cluster has and kwok by default hides: bad objects, victims that take their
grace period, dead kubelets, pods the API refuses. Each time a valid job beside the fault
must still be admitted within seconds."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import (
    condition,
    device_load,
    job,
    live_pods,
    make_fleet,
    make_job,
    phase,
    pods,
    wait_running,
)

pytestmark = pytest.mark.integration


def _admitted_reason(cluster: Cluster, namespace: str, name: str) -> str | None:
    cond = condition(cluster, namespace, name, "Admitted")
    return cond["reason"] if cond and cond["status"] == "False" else None


def test_bad_objects_fail_only_themselves(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    fleet = make_fleet(cluster, namespace, nodes=3, racks=1)
    other = make_fleet(cluster, namespace, nodes=2, racks=1)
    # A queue whose only quota names a pool that does not exist (a typo).
    typo = f"typo-{uuid.uuid4().hex[:6]}"
    cluster.create("tenantqueues", {"apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue",
                                    "metadata": {"name": typo},
                                    "spec": {"namespaces": [namespace],
                                             "quotas": [{"pool": fleet.pool + "x", "gpus": 64}]}})
    make_job(cluster, namespace, fleet, "no-quota", replicas=1, gpus=8, queue=typo)
    # A template whose container field has the wrong type (the schema keeps unknown fields).
    make_job(cluster, namespace, fleet, "bad-template", replicas=1, gpus=8,
             template={"spec": {"containers": [{"name": "train", "image": "x", "resources": "lots"}]}})
    # Node annotations of the right syntax and the wrong shape, on two of the pool's nodes.
    for node, value in zip(fleet.nodes, ('[]', '{"3": "x", "4": []}'), strict=False):
        cluster.core.patch_node(node, {"metadata": {"annotations": {"wanka.io/gpu-health": value,
                                                                    "wanka.io/health": '{"state": 5}'}}})

    # Valid jobs in the other pool and in the same pool run at once.
    make_job(cluster, namespace, other, "fine", replicas=2, gpus=8)
    make_job(cluster, namespace, fleet, "fine-too", replicas=1, gpus=8)
    wait_running(cluster, namespace, "fine", 20)
    wait_running(cluster, namespace, "fine-too", 20)

    wait_for(lambda: _admitted_reason(cluster, namespace, "no-quota") == "NoQuota", 15, what="NoQuota")
    msg = condition(cluster, namespace, "no-quota", "Admitted")["message"]  # type: ignore[index]
    assert fleet.pool in msg and fleet.pool + "x" in msg, msg
    wait_for(lambda: _admitted_reason(cluster, namespace, "bad-template") == "InvalidTemplate", 15,
             what="InvalidTemplate")
    assert "cannot make a pod" in condition(cluster, namespace, "bad-template", "Admitted")["message"]  # type: ignore[index]
    assert not pods(cluster, namespace, "no-quota") and not pods(cluster, namespace, "bad-template")
    reasons = {e.reason for e in cluster.events_for("no-quota", namespace)}
    assert "NoQuota" in reasons, reasons
    assert operator.alive()


def _graceful_job(cluster: Cluster, namespace: str, fleet: Any, name: str, priority: int, grace: int) -> None:
    make_job(cluster, namespace, fleet, name, replicas=1, gpus=8, priority=priority,
             labels={"wanka.io/sim-stop": "graceful"})
    cluster.custom.patch_namespaced_custom_object(
        "wanka.io", "v1alpha1", namespace, "trainingjobs", name,
        {"spec": {"template": {"spec": {"terminationGracePeriodSeconds": grace}}}})


def test_slow_victims_cost_one_preemption_not_a_cascade(
    cluster: Cluster, namespace: str, operator: OperatorProcess,
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=4, racks=1)
    lows = [f"low-{i}" for i in range(4)]
    for name in lows:
        _graceful_job(cluster, namespace, fleet, name, priority=0, grace=6)
    for name in lows:
        wait_running(cluster, namespace, name, 30)
    started = time.monotonic()
    make_job(cluster, namespace, fleet, "urgent", replicas=1, gpus=8, priority=100)
    # The victim takes its 6 s grace period to stop; the preemptor waits for it, no one else.
    wait_running(cluster, namespace, "urgent", 40)
    took = time.monotonic() - started
    preempted = [n for n in lows if (job(cluster, namespace, n).get("status") or {}).get("preemptions")]
    assert len(preempted) == 1, preempted
    assert took >= 5, f"urgent ran after {took:.1f}s: before its victim's grace period was over"
    for name in set(lows) - set(preempted):
        assert phase(cluster, namespace, name) == "Running"
    assert max(device_load(cluster, fleet.nodes).values()) == 1
    assert job(cluster, namespace, "urgent")["status"].get("nominatedVictims") in (None, [])


def test_dead_kubelet_does_not_hold_a_gang_or_a_deletion(
    cluster: Cluster, namespace: str, operator: OperatorProcess,
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
    make_job(cluster, namespace, fleet, "stuck", replicas=1, gpus=8, labels={"wanka.io/sim-stop": "never"},
             restartPolicy={"backoffSeconds": 0, "maxBackoffSeconds": 0})
    cluster.custom.patch_namespaced_custom_object(
        "wanka.io", "v1alpha1", namespace, "trainingjobs", "stuck",
        {"spec": {"template": {"spec": {"terminationGracePeriodSeconds": 2}}}})
    first = wait_running(cluster, namespace, "stuck", 20)["status"]["placement"][0]["node"]
    # Its kubelet dies: the node goes NotReady and nothing will ever remove its pods.
    cluster.core.patch_node(first, {"metadata": {"labels": {"wanka.io/sim-fail": "not-ready"}}})
    # The gang runs again on the other node without waiting for the dead one.
    wait_for(lambda: (j := job(cluster, namespace, "stuck")).get("status", {}).get("phase") == "Running"
             and j["status"]["placement"][0]["node"] != first, 30, what="stuck running elsewhere")
    # The old pod is forced out once its grace period is over (no kubelet will confirm it).
    wait_for(lambda: not [p for p in pods(cluster, namespace, "stuck") if p.spec.node_name == first], 20,
             what="the pod on the dead node force-deleted")
    # The second node's kubelet dies too; deleting the job is not held by its never-stopping pod.
    second = job(cluster, namespace, "stuck")["status"]["placement"][0]["node"]
    cluster.core.patch_node(second, {"metadata": {"labels": {"wanka.io/sim-fail": "not-ready"}}})
    cluster.delete("trainingjobs", "stuck", namespace)

    def gone() -> bool:
        try:
            job(cluster, namespace, "stuck")
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, 30, what="job deleted (finalizer released)")
    wait_for(lambda: not pods(cluster, namespace, "stuck"), 10, what="no pod left")


def test_refused_pods_surface_release_and_back_off(
    cluster: Cluster, namespace: str, operator: OperatorProcess,
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
    make_job(cluster, namespace, fleet, "refused", replicas=1, gpus=8,
             restartPolicy={"backoffSeconds": 60, "maxBackoffSeconds": 600})
    cluster.custom.patch_namespaced_custom_object(
        "wanka.io", "v1alpha1", namespace, "trainingjobs", "refused",
        {"spec": {"template": {"spec": {"serviceAccountName": "does-not-exist"}}}})
    make_job(cluster, namespace, fleet, "beside", replicas=1, gpus=8)
    wait_running(cluster, namespace, "beside", 20)
    cond = wait_for(lambda: (c := condition(cluster, namespace, "refused", "PodsReady"))
                    and c["reason"] == "PodCreateRefused" and c, 20, what="refusal shown")
    assert "does-not-exist" in cond["message"], cond
    # After the bound the reservation is released and the job backs off.
    wait_for(lambda: _admitted_reason(cluster, namespace, "refused") == "PodCreateRefused", 45,
             what="reservation released")
    status = job(cluster, namespace, "refused")["status"]
    assert status["phase"] == "Queued" and not status.get("placement")
    assert status["failedAdmissions"] == 1 and status.get("retryAfter")
    # Its GPUs went back: another job takes them.
    make_job(cluster, namespace, fleet, "takes-it", replicas=1, gpus=8)
    wait_running(cluster, namespace, "takes-it", 20)
    assert not live_pods(cluster, namespace, "refused")


def test_a_queue_naming_a_missing_pool_says_so(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    name = f"missing-{uuid.uuid4().hex[:6]}"
    cluster.create("tenantqueues", {"apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue",
                                    "metadata": {"name": name},
                                    "spec": {"namespaces": [namespace], "quotas": [{"pool": "nowhere", "gpus": 8}]}})

    def ready() -> dict[str, Any] | None:
        conds = (cluster.get("tenantqueues", name).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "Ready"), None)

    cond = wait_for(ready, 15, what="queue Ready condition")
    assert cond["status"] == "False" and cond["reason"] == "PoolNotFound" and "nowhere" in cond["message"]
