"""Onboarding and remediation on the real control plane: a node passes its burn-in before it
takes work, a failing one is quarantined (PreflightFailed), returned and idle nodes are checked
again, and a node that needs service gets the remediation object its controller expects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import Cluster, OperatorProcess, holds, wait_for
from tests.integration.jobkit import make_fleet, make_job, phase, wait_running
from tests.integration.test_health import record, set_gpu_condition

pytestmark = pytest.mark.integration
ONBOARDING = "wanka.io/onboarding"


def burn_in_template(outcome: str, delay: str = "3s", message: str = "") -> dict[str, Any]:
    """A burn-in pod kwok runs to `outcome` (succeed or fail) after `delay`."""
    annotations = {"wanka.io/sim-delay": delay}
    if message:
        annotations["wanka.io/sim-message"] = message
    return {"metadata": {"labels": {"wanka.io/sim": outcome}, "annotations": annotations},
            "spec": {"containers": [{"name": "burn-in", "image": "wanka:burn-in"}]}}


def taint_keys(cluster: Cluster, node: str) -> dict[str, str]:
    return {t.key: t.effect for t in cluster.core.read_node(node).spec.taints or []}


def burn_ins(cluster: Cluster, node: str) -> list[Any]:
    pods = cluster.core.list_namespaced_pod("default", label_selector="wanka.io/burn-in").items
    return sorted((p for p in pods if p.spec.node_name == node and p.metadata.deletion_timestamp is None),
                  key=lambda p: int(p.metadata.labels["wanka.io/burn-in"]))


def state(cluster: Cluster, node: str) -> str | None:
    return record(cluster, node).get("state")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_new_nodes_take_no_gang_member_until_their_burn_in_passes(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    # kwok leaves these burn-in pods alone: the test ends them, as their kubelet would.
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1, pool_spec={
        "onboarding": {"template": burn_in_template("pending"), "timeoutSeconds": 120}})
    node = fleet.nodes[0]
    wait_for(lambda: state(cluster, node) == "Onboarding", 15, what="the new node is Onboarding")
    assert taint_keys(cluster, node).get(ONBOARDING) == "NoSchedule"
    (pod,) = wait_for(lambda: burn_ins(cluster, node) or None, 10, what="its burn-in pod")
    assert pod.spec.restart_policy == "Never" and pod.spec.active_deadline_seconds == 120
    assert pod.spec.containers[0].resources.limits == {"nvidia.com/gpu": "8"}
    assert any(t.key == ONBOARDING for t in pod.spec.tolerations)
    assert pod.metadata.owner_references[0].kind == "Node"

    make_job(cluster, namespace, fleet, "waits", replicas=2)
    holds(lambda: phase(cluster, namespace, "waits") in ("Queued", None), 3,
          what="no gang member lands on an onboarding node")
    status = cluster.get("gpupools", fleet.pool).get("status") or {}
    assert status["nodes"]["onboarding"] == 2 and status["gpus"]["allocatable"] == 0

    for n in fleet.nodes:
        for burn_in in wait_for(lambda n=n: burn_ins(cluster, n) or None, 10, what=f"{n}'s burn-in pod"):
            cluster.core.patch_namespaced_pod_status(burn_in.metadata.name, "default", {"status": {
                "phase": "Succeeded", "containerStatuses": [{
                    "name": "burn-in", "image": "wanka:burn-in", "imageID": "", "ready": False,
                    "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}})
    wait_running(cluster, namespace, "waits", timeout=30)
    rec = record(cluster, node)
    assert rec["state"] == "Healthy" and rec["validated"] > 0
    assert ONBOARDING not in taint_keys(cluster, node)
    assert not burn_ins(cluster, node), "a passed burn-in's pod is cleaned up"
    reasons = [e.reason for e in cluster.events_for(node)]
    assert "Onboarding" in reasons and "BurnInPassed" in reasons


def test_a_failing_burn_in_quarantines_and_a_returned_node_is_checked_again(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    failing = burn_in_template("fail", delay="1s",
                               message='{"wankaBurnIn":1,"ok":false,"reason":"DeviceFault",'
                                       '"message":"device 3: XID79 fell off the bus"}')
    fleet = make_fleet(cluster, namespace, nodes=1, racks=1, pool_spec={
        "onboarding": {"template": failing, "retries": 1}})
    node = fleet.nodes[0]
    wait_for(lambda: state(cluster, node) == "Quarantined", 40, what="quarantined after 2 failed burn-ins")
    rec = record(cluster, node)
    assert rec["reason"] == "PreflightFailed" and rec["burnIns"] == 2
    assert taint_keys(cluster, node) == {"wanka.io/unhealthy": "NoSchedule"}
    annotations = cluster.core.read_node(node).metadata.annotations
    assert annotations["wanka.io/remediation"] == "replace"
    events = {e.reason: e.message for e in cluster.events_for(node)}
    assert "device 3: XID79 fell off the bus" in events["PreflightFailed"]
    assert "attempt 1 of 2" in events["BurnInFailed"]
    kept = burn_ins(cluster, node)
    assert [p.metadata.labels["wanka.io/burn-in"] for p in kept] == ["2"], "the failed pod stays for its logs"

    # Repaired: the platform team fixes the check and clears the quarantine; it is checked again.
    cluster.custom.patch_cluster_custom_object(
        "wanka.io", "v1alpha1", "gpupools", fleet.pool,
        {"spec": {"onboarding": {"template": burn_in_template("succeed", delay="1s")}}})
    cluster.core.patch_node(node, {"metadata": {"annotations": {"wanka.io/quarantine-clear": now_rfc3339()}}})
    wait_for(lambda: record(cluster, node).get("onboard") == "Returned" or state(cluster, node) == "Healthy",
             15, what="the returned node is onboarded again")
    wait_for(lambda: state(cluster, node) == "Healthy", 30, what="its new burn-in passes")
    assert record(cluster, node)["burnIns"] == 3
    assert "wanka.io/remediation" not in (cluster.core.read_node(node).metadata.annotations or {})
    assert not taint_keys(cluster, node)


def test_an_idle_node_is_revalidated_and_a_busy_one_is_not(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1, pool_spec={
        "onboarding": {"template": burn_in_template("succeed", delay="1s"),
                       "revalidateIdleAfterSeconds": 12}})
    wait_for(lambda: all(state(cluster, n) == "Healthy" for n in fleet.nodes), 30, what="both onboarded")
    make_job(cluster, namespace, fleet, "busy", replicas=1)
    running = wait_running(cluster, namespace, "busy")
    busy = running["status"]["placement"][0]["node"]
    idle = next(n for n in fleet.nodes if n != busy)
    first = record(cluster, idle)["validated"]
    wait_for(lambda: record(cluster, idle).get("validated", 0) > first, 40, what="the idle node revalidated")
    assert record(cluster, idle)["burnIns"] == 2
    assert record(cluster, busy)["burnIns"] == 1, "a node running a gang is never taken for a check"
    assert phase(cluster, namespace, "busy") == "Running"


@pytest.fixture(scope="module")
def repair_crd(cluster: Cluster) -> str:
    """A stand-in for a remediation controller's kind (as medik8s' SelfNodeRemediation is)."""
    ext = client.ApiextensionsV1Api(cluster.api)
    body = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "noderepairs.test.wanka.io"},
        "spec": {"group": "test.wanka.io", "scope": "Namespaced",
                 "names": {"plural": "noderepairs", "singular": "noderepair", "kind": "NodeRepair"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    wait_for(lambda: _served(cluster), 20, what="the NodeRepair kind is served")
    return "noderepairs"


def _served(cluster: Cluster) -> bool:
    try:
        cluster.custom.list_namespaced_custom_object("test.wanka.io", "v1", "default", "noderepairs")
        return True
    except ApiException:
        return False


def test_a_node_with_a_fatal_fault_gets_the_remediation_object_until_it_recovers(
    cluster: Cluster, operator: OperatorProcess, namespace: str, repair_crd: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1, pool_spec={
        "health": {"fatalReasons": ["XID79"], "recoveryStableSeconds": 1},
        "remediation": {"object": {"apiVersion": "test.wanka.io/v1", "kind": "NodeRepair",
                                   "namespace": "default", "spec": {"strategy": "Reboot"}}}})
    node = fleet.nodes[0]

    def repair() -> dict[str, Any] | None:
        try:
            return dict(cluster.custom.get_namespaced_custom_object(
                "test.wanka.io", "v1", "default", repair_crd, node))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    set_gpu_condition(cluster, node, "False", "XID79")
    obj = wait_for(repair, 15, what="the NodeRepair object for the node")
    assert obj["spec"] == {"strategy": "Reboot"}
    assert obj["metadata"]["labels"]["wanka.io/remediation"] == "reboot"
    assert obj["metadata"]["annotations"]["wanka.io/reason"] == "XID79"
    # The object is created first and the node's annotation written after it (so a restarted
    # operator neither repeats nor forgets it): seeing the object does not mean the annotation is
    # there yet.
    wait_for(lambda: (cluster.core.read_node(node).metadata.annotations or {})
             .get("wanka.io/remediation") == "reboot", 10, what="the node's remediation annotation")
    wait_for(lambda: "RemediationRequested" in [e.reason for e in cluster.events_for(node)], 10,
             what="the RemediationRequested Event")
    holds(lambda: repair() is not None, 2, what="the object stays while the node is sick")

    set_gpu_condition(cluster, node, "True", "GPUsHealthy")
    wait_for(lambda: repair() is None, 20, what="the object deleted once the node is fine")
    wait_for(lambda: "wanka.io/remediation" not in (cluster.core.read_node(node).metadata.annotations or {}),
             10, what="the annotation removed")
    other = cluster.core.read_node(fleet.nodes[1]).metadata.annotations or {}
    assert "wanka.io/remediation" not in other
