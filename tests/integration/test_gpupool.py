"""The GPUPool controller keeps status true to nodes and bound pods, on a real API server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from wanka.cluster.dev import create_nodes

pytestmark = pytest.mark.integration


def make_pool(cluster: Cluster, selector_value: str, **spec: Any) -> str:
    name = f"pool-{selector_value}"
    cluster.create("gpupools", {
        "apiVersion": "wanka.io/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": name},
        "spec": {"nodeSelector": {"matchLabels": {"wanka.io/pool": selector_value}},
                 "topology": {"levels": ["wanka.io/rack"]}, **spec},
    })
    return name


def pool_status(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get("gpupools", name).get("status") or {}


def gpus(cluster: Cluster, name: str) -> dict[str, Any]:
    return pool_status(cluster, name).get("gpus") or {}


def test_pool_counts_nodes_and_every_bound_pod(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    tag = uuid.uuid4().hex[:6]
    names = create_nodes(cluster.api, 16, 8, "H100-80GB", 2, prefix=f"n{tag}",
                         labels={"wanka.io/pool": tag})
    pool = make_pool(cluster, tag)

    wait_for(lambda: gpus(cluster, pool).get("total") == 128 and gpus(cluster, pool).get("free") == 128,
             15, what="pool status: 128 GPUs total and free")
    status = pool_status(cluster, pool)
    assert status["nodes"]["total"] == 16 and status["nodes"]["healthy"] == 16
    assert status["models"] == [{"model": "H100-80GB", "total": 128, "free": 128.0}]
    assert status["observedGeneration"] == 1
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "NodesSelected"

    # A plain pod, not Wanka's, bound by hand: still counted.
    cluster.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "plain"},
        "spec": {"schedulerName": "someone-else", "containers": [{
            "name": "c", "image": "busybox",
            "resources": {"limits": {"nvidia.com/gpu": "3"}, "requests": {"cpu": "1"}},
        }]},
    })
    cluster.core.create_namespaced_binding(namespace, {
        "metadata": {"name": "plain"}, "target": {"kind": "Node", "name": names[5]},
    }, _preload_content=False)
    wait_for(lambda: gpus(cluster, pool).get("allocated") == 3 and gpus(cluster, pool).get("free") == 125,
             15, what="allocated 3 / free 125")
    # kwok runs it; a Running pod still holds its devices.
    wait_for(lambda: cluster.core.read_namespaced_pod("plain", namespace).status.phase == "Running", 15,
             what="the plain pod Running")
    assert gpus(cluster, pool)["allocated"] == 3

    # The pod finishes: its devices come back.
    cluster.core.delete_namespaced_pod("plain", namespace, grace_period_seconds=0)
    wait_for(lambda: gpus(cluster, pool).get("free") == 128, 15, what="free back to 128")

    events = cluster.events_for(pool)
    assert any(e.reason == "NodesChanged" for e in events), [e.reason for e in events]


def test_pool_follows_node_health_and_membership(cluster: Cluster, operator: OperatorProcess) -> None:
    tag = uuid.uuid4().hex[:6]
    names = create_nodes(cluster.api, 4, 8, "A100-80GB", 1, prefix=f"h{tag}",
                         labels={"wanka.io/pool": tag})
    pool = make_pool(cluster, tag, health={"recoveryStableSeconds": 1})
    wait_for(lambda: (pool_status(cluster, pool).get("nodes") or {}).get("healthy") == 4, 15,
             what="4 healthy nodes")

    # Simulated kubelet failure: kwok reports Ready=False.
    cluster.core.patch_node(names[0], {"metadata": {"labels": {"wanka.io/sim-fail": "not-ready"}}})
    wait_for(lambda: (pool_status(cluster, pool).get("nodes") or {}).get("sick") == 1, 20,
             what="1 sick node")
    status = pool_status(cluster, pool)
    assert status["gpus"]["total"] == 32 and status["gpus"]["allocatable"] == 24
    assert status["gpus"]["free"] == 24
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and names[0] in degraded["message"]
    wait_for(lambda: any(e.reason == "NodesSick" for e in cluster.events_for(pool)), 10,
             what="a NodesSick event")

    # A node leaving the pool (label removed) leaves the counts.
    cluster.core.patch_node(names[1], {"metadata": {"labels": {"wanka.io/pool": None}}})
    wait_for(lambda: (pool_status(cluster, pool).get("nodes") or {}).get("total") == 3, 15,
             what="3 nodes after one left")

    # Recovery: the label goes, kwok reports Ready again.
    cluster.core.patch_node(names[0], {"metadata": {"labels": {"wanka.io/sim-fail": None}}})
    wait_for(lambda: (pool_status(cluster, pool).get("nodes") or {}).get("healthy") == 3, 20,
             what="all 3 remaining nodes healthy again")


def test_pool_with_malformed_status_is_repaired(cluster: Cluster, operator: OperatorProcess) -> None:
    tag = uuid.uuid4().hex[:6]
    create_nodes(cluster.api, 1, 4, "L40S", 1, prefix=f"m{tag}", labels={"wanka.io/pool": tag})
    pool = make_pool(cluster, tag)
    wait_for(lambda: gpus(cluster, pool).get("total") == 4, 15, what="4 GPUs")
    # Someone writes garbage into status: the operator neither crashes nor keeps it.
    cluster.custom.patch_cluster_custom_object_status(
        "wanka.io", "v1alpha1", "gpupools", pool, {"status": {"gpus": {"total": 999}}})
    wait_for(lambda: gpus(cluster, pool).get("total") == 4, 15, what="status repaired to 4 GPUs")
    assert operator.alive()


def test_pool_selecting_nothing_says_so(cluster: Cluster, operator: OperatorProcess) -> None:
    pool = make_pool(cluster, f"none-{uuid.uuid4().hex[:6]}")

    def ready() -> dict[str, Any] | None:
        return next((c for c in pool_status(cluster, pool).get("conditions") or []
                     if c["type"] == "Ready"), None)

    cond = wait_for(ready, 15, what="a Ready condition")
    assert cond["status"] == "False" and cond["reason"] == "NoNodesSelected"


def test_metrics_endpoint_reports_pools(cluster: Cluster, operator: OperatorProcess) -> None:
    tag = uuid.uuid4().hex[:6]
    create_nodes(cluster.api, 2, 8, "H100-80GB", 1, prefix=f"x{tag}", labels={"wanka.io/pool": tag})
    pool = make_pool(cluster, tag)
    wait_for(lambda: gpus(cluster, pool).get("total") == 16, 15, what="16 GPUs")
    text = wait_for(lambda: (t := operator.metrics()) and f'pool="{pool}"' in t and t, 10,
                    what="pool series in /metrics")
    assert f'wanka_pool_gpus_capacity{{pool="{pool}"}} 16.0' in text
    parts = {line.split("state=\"")[1].split("\"")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith(f'wanka_pool_gpus{{pool="{pool}",')}
    assert sum(parts.values()) == 16, parts
    assert "wanka_build_info" in text
    try:
        cluster.delete("gpupools", pool)
    except ApiException:
        pass
