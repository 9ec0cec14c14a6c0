"""Node constraints on the real control plane: the template's nodeSelector and tolerations,
allocatable devices, and pools that select the same nodes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import (
    Fleet,
    condition,
    device_load,
    live_pods,
    make_fleet,
    make_job,
    phase,
    wait_running,
)
from wanka.cluster.dev import node_manifest

pytestmark = pytest.mark.integration


def label_node(cluster: Cluster, name: str, **labels: str) -> None:
    cluster.core.patch_node(name, {"metadata": {"labels": labels}})


def nodes_of(cluster: Cluster, namespace: str, job: str) -> set[str]:
    return {p.spec.node_name for p in live_pods(cluster, namespace, job)}


def waits_because(cluster: Cluster, namespace: str, job: str, words: str) -> Any:
    """Until the job is Queued with `words` in its Admitted message."""
    def check() -> Any:
        cond = condition(cluster, namespace, job, "Admitted")
        return cond if cond and cond["status"] == "False" and words in cond["message"] else None
    return wait_for(check, 20, what=f"{job} waiting because {words!r} "
                                    f"(now {condition(cluster, namespace, job, 'Admitted')})")


def ready_condition(cluster: Cluster, pool: str) -> dict[str, Any]:
    conds = (cluster.get("gpupools", pool).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "Ready"), {})


def overlap_reported(cluster: Cluster, pool: str) -> None:
    """Until the pool's Ready condition and a Warning Event say OverlappingPools."""
    wait_for(lambda: ready_condition(cluster, pool).get("reason") == "OverlappingPools", 15,
             what=f"{pool} Ready=False/OverlappingPools (now {ready_condition(cluster, pool)})")
    wait_for(lambda: any(e.reason == "OverlappingPools" and e.type == "Warning"
                         for e in cluster.events_for(pool)), 10, what=f"a Warning Event on {pool}")


def test_a_job_lands_only_on_nodes_its_template_selects(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=4, racks=1)
    # The last two nodes by name: what best-fit would otherwise pick last.
    zone_a = fleet.nodes[2:]
    for name in zone_a:
        label_node(cluster, name, zone="a")
    selector = {"nodeSelector": {"zone": "a"}}
    make_job(cluster, namespace, fleet, "picky", replicas=2, gpus=8, pod_spec=selector)
    wait_running(cluster, namespace, "picky")
    assert nodes_of(cluster, namespace, "picky") == set(zone_a)
    assert all(p.spec.node_selector == {"zone": "a"} for p in live_pods(cluster, namespace, "picky"))
    # zone a is full: another job for it waits, although two other nodes are idle
    make_job(cluster, namespace, fleet, "picky-too", replicas=1, gpus=8, pod_spec=selector)
    waits_because(cluster, namespace, "picky-too", "2 not matching nodeSelector/affinity")
    assert not live_pods(cluster, namespace, "picky-too")
    # required node affinity: everywhere but zone a
    away = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}]}}}}
    make_job(cluster, namespace, fleet, "away", replicas=2, gpus=8, pod_spec=away)
    wait_running(cluster, namespace, "away")
    assert nodes_of(cluster, namespace, "away") == set(fleet.nodes[:2])
    assert phase(cluster, namespace, "picky-too") == "Queued"
    # a template the API server would refuse waits with what is wrong, and holds nothing
    make_job(cluster, namespace, fleet, "garbled", replicas=1, gpus=8,
             pod_spec={"tolerations": [{"key": "x", "operator": "Sometimes"}]})
    cond = waits_because(cluster, namespace, "garbled", "tolerations[0].operator")
    assert cond["reason"] == "InvalidRequest"


def test_a_tainted_node_gets_only_jobs_that_tolerate_it(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
    tainted = fleet.nodes[0]  # the one best-fit would pick first
    cluster.core.patch_node(tainted, {"spec": {"taints": [
        {"key": "example.com/dedicated", "value": "team-a", "effect": "NoSchedule"}]}})
    make_job(cluster, namespace, fleet, "plain", replicas=1, gpus=8)
    wait_running(cluster, namespace, "plain")
    assert nodes_of(cluster, namespace, "plain") == {fleet.nodes[1]}
    make_job(cluster, namespace, fleet, "plain-too", replicas=1, gpus=8)
    waits_because(cluster, namespace, "plain-too", "1 untolerated taint")
    toleration = {"key": "example.com/dedicated", "operator": "Equal", "value": "team-a", "effect": "NoSchedule"}
    make_job(cluster, namespace, fleet, "tolerant", replicas=1, gpus=8, pod_spec={"tolerations": [toleration]})
    wait_running(cluster, namespace, "tolerant")
    assert nodes_of(cluster, namespace, "tolerant") == {tainted}
    pod = live_pods(cluster, namespace, "tolerant")[0]
    assert [(t.key, t.operator, t.value, t.effect) for t in pod.spec.tolerations or []
            if t.key == "example.com/dedicated"] == [("example.com/dedicated", "Equal", "team-a", "NoSchedule")]
    assert phase(cluster, namespace, "plain-too") == "Queued"
    assert max(device_load(cluster, fleet.nodes).values()) == 1


def test_overlapping_pools_share_no_node(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    fleet = make_fleet(cluster, namespace, nodes=4, racks=1)
    tag = uuid.uuid4().hex[:6]
    # Pool "other" selects two nodes of its own and the last two of the first pool.
    own = [f"o{tag}-{i}" for i in range(2)]
    for name in own:
        cluster.core.create_node(node_manifest(name, 8, "H100-80GB", "rack-0", {"overlap": tag}))
    shared = fleet.nodes[2:]
    for name in shared:
        label_node(cluster, name, overlap=tag)
    other = f"pool-o{tag}"
    cluster.create("gpupools", {"apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool",
                                "metadata": {"name": other},
                                "spec": {"nodeSelector": {"matchLabels": {"overlap": tag}},
                                         "topology": {"levels": ["wanka.io/rack"]}}})
    cluster.custom.patch_cluster_custom_object(
        "wanka.io", "v1alpha1", "tenantqueues", fleet.queue,
        {"spec": {"quotas": [{"pool": fleet.pool, "gpus": 10_000}, {"pool": other, "gpus": 10_000}]}})
    for pool, peer in ((fleet.pool, other), (other, fleet.pool)):
        overlap_reported(cluster, pool)
        ready = ready_condition(cluster, pool)
        assert ready["status"] == "False"
        assert ready["message"].startswith(f"2 node(s) ({', '.join(sorted(shared))}) are also selected by "
                                           f"GPUPool {peer}")
        assert (cluster.get("gpupools", pool).get("status") or {})["gpus"]["total"] == 16
    # a job in each pool runs on the nodes only that pool selects
    make_job(cluster, namespace, fleet, "first", replicas=2, gpus=8)
    make_job(cluster, namespace, Fleet(other, fleet.queue, own), "second", replicas=2, gpus=8)
    wait_running(cluster, namespace, "first")
    wait_running(cluster, namespace, "second")
    assert nodes_of(cluster, namespace, "first") == set(fleet.nodes[:2])
    assert nodes_of(cluster, namespace, "second") == set(own)
    # both pools are full now: the shared nodes stay empty rather than booked twice
    make_job(cluster, namespace, fleet, "third", replicas=1, gpus=8)
    make_job(cluster, namespace, Fleet(other, fleet.queue, own), "fourth", replicas=1, gpus=8)
    waits_because(cluster, namespace, "third", "room for 0")
    waits_because(cluster, namespace, "fourth", "room for 0")
    load = device_load(cluster, [*fleet.nodes, *own])
    assert max(load.values()) == 1
    assert not [k for k in load if k[0] in shared]


def test_a_node_is_never_given_more_devices_than_allocatable(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    body = node_manifest(f"a{tag}-0", 8, "H100-80GB", "rack-0", {"wanka.io/pool": tag})
    body["status"]["allocatable"] = {**body["status"]["allocatable"], "nvidia.com/gpu": "6"}
    cluster.core.create_node(body)
    pool = f"pool-{tag}"
    cluster.create("gpupools", {"apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool",
                                "metadata": {"name": pool},
                                "spec": {"nodeSelector": {"matchLabels": {"wanka.io/pool": tag}}}})
    queue = f"q-{tag}"
    cluster.create("tenantqueues", {"apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue",
                                    "metadata": {"name": queue},
                                    "spec": {"namespaces": [namespace], "quotas": [{"pool": pool, "gpus": 100}]}})
    wait_for(lambda: ((cluster.get("gpupools", pool).get("status") or {}).get("gpus") or {}).get("total") == 6,
             15, what="pool counts the allocatable devices")
    fleet = Fleet(pool, queue, [body["metadata"]["name"]])
    make_job(cluster, namespace, fleet, "four", replicas=1, gpus=4)
    wait_running(cluster, namespace, "four")
    make_job(cluster, namespace, fleet, "two", replicas=1, gpus=2)
    wait_running(cluster, namespace, "two")
    make_job(cluster, namespace, fleet, "two-more", replicas=1, gpus=2)  # fits capacity, not allocatable
    waits_because(cluster, namespace, "two-more", "room for 0")
    assert not live_pods(cluster, namespace, "two-more")
    load = device_load(cluster, fleet.nodes)
    assert sum(load.values()) == 6 and max(load.values()) == 1
    assert all(index < 6 for _, index in load)
