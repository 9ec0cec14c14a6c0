"""Kubernetes objects -> snapshot -> pool accounting, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from wanka.api.gpupool import GPUPoolSpec
from wanka.cluster.translate import PassMemo, build_pool_snapshot, parse_devices, pod_requests
from wanka.core.accounting import summarize
from wanka.core.snapshot import DeviceShare

SPEC = GPUPoolSpec.model_validate({
    "nodeSelector": {"matchLabels": {"wanka.io/pool": "p"}},
    "topology": {"levels": ["wanka.io/rack"]},
    "health": {"unhealthyConditions": [{"type": "GPUHealthy", "status": "False"}]},
})


def node(name: str, gpus: int = 8, ready: str = "True", pool: str = "p", **extra: Any) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": ready}, *extra.pop("conditions", [])]
    return {
        "metadata": {"name": name, "labels": {"wanka.io/pool": pool, "wanka.io/rack": "r1",
                                              "wanka.io/gpu-model": "H100-80GB"},
                     "annotations": extra.pop("annotations", {})},
        "spec": extra.pop("spec", {}),
        "status": {"capacity": {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi"},
                   "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi"},
                   "conditions": conditions},
    }


def pod(name: str, node_name: str | None, gpus: int = 0, phase: str = "Running", **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", **meta},
        "spec": {"nodeName": node_name, "containers": [
            {"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)},
                                        "requests": {"cpu": "2", "memory": "4Gi"}}}]},
        "status": {"phase": phase},
    }


def test_pod_requests_follow_scheduler_rules() -> None:
    p = pod("a", "n", 3)
    p["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": "8"}}}]
    assert pod_requests(p, "nvidia.com/gpu") == (8000, 4096, 3)


@pytest.mark.parametrize("raw,want", [
    ("0,1,2", (DeviceShare(0), DeviceShare(1), DeviceShare(2))),
    ("3:250", (DeviceShare(3, 250),)),
    ("", ()),
])
def test_parse_devices(raw: str, want: tuple[DeviceShare, ...]) -> None:
    assert parse_devices(raw) == want


def test_summary_counts_every_bound_pod_and_only_healthy_capacity() -> None:
    nodes = [
        node("a"), node("b"), node("c", ready="False"),
        node("d", conditions=[{"type": "GPUHealthy", "status": "False", "reason": "XID79"}]),
        node("e", annotations={"wanka.io/gpu-health": '{"7": {"healthy": false, "reason": "XID48"}}'}),
        node("other", pool="q"),
    ]
    pods = [
        pod("plain", "a", 3),
        pod("done", "a", 8, phase="Succeeded"),
        pod("pending", None, 8),
        pod("ours", "b", 0, labels={"wanka.io/job": "j", "wanka.io/replica": "0"},
            annotations={"wanka.io/devices": "0,1"}),
        pod("share", "b", 0, labels={"wanka.io/job": "s", "wanka.io/replica": "0"},
            annotations={"wanka.io/devices": "2:250"}),
        pod("on-sick", "c", 2),
    ]
    view = build_pool_snapshot(SPEC, nodes, pods)
    assert sorted(view.snapshot.nodes) == ["a", "b", "c", "d", "e"]
    assert view.conflicts == []
    s = summarize(view.snapshot)
    assert s.gpus_total == 40
    assert s.gpus_allocated == pytest.approx(3 + 2 + 0.25 + 2)
    # a: 5 free, b: 5.75 free, e: 7 healthy devices free; c and d are sick.
    assert s.gpus_allocatable == 8 + 8 + 7
    assert s.gpus_free == pytest.approx(5 + 5.75 + 7)
    assert s.nodes_total == 5 and s.nodes_healthy == 3 and s.nodes_sick == 2
    assert s.sick_nodes == ("c", "d") and s.sick_devices == 1


def test_a_device_claimed_twice_is_reported_not_double_counted() -> None:
    pods = [
        pod("x", "a", 0, labels={"wanka.io/job": "x"}, annotations={"wanka.io/devices": "0,1,2,3,4,5"}),
        pod("y", "a", 4),
    ]
    view = build_pool_snapshot(SPEC, [node("a")], pods)
    assert len(view.conflicts) == 1 and "pod:ns/y" in view.conflicts[0]
    assert summarize(view.snapshot).gpus_allocated == 6


def test_malformed_annotations_do_not_break_the_snapshot() -> None:
    nodes = [node("a", annotations={"wanka.io/gpu-health": "{not json", "wanka.io/health": "[]"})]
    pods = [pod("x", "a", 2, labels={"wanka.io/job": "x"}, annotations={"wanka.io/devices": "zero"})]
    s = summarize(build_pool_snapshot(SPEC, nodes, pods).snapshot)
    assert s.gpus_allocated == 2 and s.nodes_healthy == 1


@pytest.mark.parametrize("capacity", ["1000000000000", "1e12", "1Ei", "-5", "lots"])
def test_a_node_claiming_absurd_capacity_is_bounded(capacity: str) -> None:
    """Node status is anyone's write with nodes/status: it must never size the operator's memory."""
    from wanka.cluster.translate import MAX_DEVICES_PER_NODE

    bogus = node("a")
    bogus["status"]["capacity"]["nvidia.com/gpu"] = capacity
    view = build_pool_snapshot(SPEC, [bogus, node("b")], [])
    devices = {n.name: len(n.devices) for n in view.snapshot.nodes.values()}
    assert 0 <= devices["a"] <= MAX_DEVICES_PER_NODE and devices["b"] == 8


def shape(view: Any) -> tuple[Any, ...]:
    """Everything a snapshot decides with: nodes, devices, use, health, and each allocation."""
    snap = view.snapshot
    nodes = tuple((n.name, n.schedulable, n.health, n.used_cpu_milli, n.opaque_gpus,
                   tuple((d.index, d.healthy, d.used_milli, d.shares) for d in n.devices))
                  for n in sorted(snap.nodes.values(), key=lambda n: n.name))
    return nodes, tuple(sorted(snap.allocations.items())), tuple(view.conflicts)


def test_a_memo_gives_the_snapshot_a_fresh_build_gives_as_objects_change() -> None:
    memo = PassMemo()
    nodes = [node("a"), node("b")]
    pods = [pod("x", "a", 3), pod("y", "b", 0, labels={"wanka.io/job": "j"}, annotations={"wanka.io/devices": "1"})]

    def both() -> Any:
        fresh = build_pool_snapshot(SPEC, nodes, pods)
        kept = build_pool_snapshot(SPEC, nodes, pods, memo=memo)
        assert shape(kept) == shape(fresh)
        return kept

    first = both()
    # A snapshot's nodes are its own: allocating in one leaves the memo and the next build alone.
    first.snapshot.node("a").devices[0].used_milli = 1000
    first.snapshot.node("a").used_cpu_milli = 99
    second = both()
    assert second.snapshot.node("a").devices[0].used_milli == 0 and second.snapshot.node("a").opaque_gpus == 3
    # Changed objects (the cache replaces them, never edits them) are translated again.
    nodes[1] = node("b", conditions=[{"type": "GPUHealthy", "status": "False"}])
    pods[0] = pod("x", "a", 5)
    pods.append(pod("z", "b", 2))
    third = both()
    assert not third.snapshot.node("b").schedulable and third.snapshot.node("a").opaque_gpus == 5
    pods[0] = pod("x", "a", 5, phase="Succeeded")
    assert both().snapshot.node("a").opaque_gpus == 0


def test_a_memo_never_serves_a_node_built_for_another_pool_spec() -> None:
    memo = PassMemo()
    nodes = [node("a", gpus=8)]
    build_pool_snapshot(SPEC, nodes, [], memo=memo)
    other = GPUPoolSpec.model_validate({**SPEC.model_dump(by_alias=True, exclude_none=True),
                                      "accelerator": {"resourceName": "example.com/gpu"}})
    view = build_pool_snapshot(other, nodes, [], memo=memo)
    assert view.snapshot.node("a").devices == []  # no example.com/gpu on it
