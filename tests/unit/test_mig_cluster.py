"""MIG in the cluster layer without a cluster: node objects -> snapshot devices with their
instances, and the repartitioner that talks to NVIDIA's MIG manager."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import yaml

from tests.unit.builders import make_job
from tests.unit.test_translate_accounting import node, pod
from wanka.api.gpupool import GPUPoolSpec
from wanka.cluster.cache import FleetCache
from wanka.cluster.jobs import JobReconciler
from wanka.cluster.ledger import raw_ledger
from wanka.cluster.mig import (
    CONFIG_LABEL,
    GEOMETRY_ANNOTATION,
    STATE_LABEL,
    config_name,
    read_geometry,
    send_repartition,
)
from wanka.cluster.translate import build_pool_snapshot
from wanka.core.constraints import Toleration
from wanka.core.gang import place_gang
from wanka.core.mig import MigInstance, NodeGeometry

SPEC = GPUPoolSpec.model_validate({
    "nodeSelector": {"matchLabels": {"wanka.io/pool": "p"}},
    "accelerator": {"memoryGiB": 80},
    "sharing": {"mode": "MIG", "migProfiles": ["1g.10gb", "7g.80gb"]},
})
SEVEN = {0: tuple(MigInstance("1g.10gb", s) for s in range(7))}


def mig_node(name: str = "n1", applied: bool = True, **extra: Any) -> dict[str, Any]:
    """8 H100s, device 0 carved into 7 x 1g.10gb (the MIG manager done with it, or not yet)."""
    obj = node(name, gpus=7 if applied else 8, **extra)
    obj["metadata"]["annotations"][GEOMETRY_ANNOTATION] = json.dumps({"0": [["1g.10gb", s] for s in range(7)]})
    obj["metadata"]["labels"][CONFIG_LABEL] = config_name(SEVEN)
    obj["metadata"]["labels"][STATE_LABEL] = "success"
    if applied:
        obj["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] = "7"
    return obj


def mig_pod(name: str, instance: str, **meta: Any) -> dict[str, Any]:
    obj = pod(name, "n1", **meta)
    obj["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/mig-1g.10gb": "1"}
    obj["metadata"].setdefault("annotations", {})["wanka.io/mig-instance"] = instance
    return obj


def test_a_mig_node_becomes_devices_with_instances_held_by_ledger_and_pods() -> None:
    job = {"metadata": {"name": "j", "namespace": "ns"},
           "spec": {"pool": "p", "queue": "q", "resources": {"migProfile": "1g.10gb"},
                    "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}},
           "status": {"phase": "Running", "placement": [{"replica": 0, "node": "n1", "devices": [0],
                                                         "migStart": 2}]}}
    member = mig_pod("j-0", "0:2", labels={"wanka.io/job": "j", "wanka.io/replica": "0"})
    stray = mig_pod("stray", "0:5")  # a MIG pod with no ledger entry (its job gone) still holds
    view = build_pool_snapshot(SPEC, [mig_node()], [member, stray], raw_ledger(job))
    assert view.conflicts == []
    devices = view.snapshot.node("n1").devices
    assert len(devices) == 8, "7 whole GPUs advertised plus the partitioned one"
    assert devices[0].mig == {s: "1g.10gb" for s in range(7)} and not devices[0].mig_settling
    assert devices[0].mig_held == {2, 5}
    assert devices[0].used_milli == 2 * 142
    assert all(not d.mig for d in devices[1:])


def test_a_change_not_yet_applied_is_settling_and_adds_no_phantom_device() -> None:
    view = build_pool_snapshot(SPEC, [mig_node(applied=False)], [])
    devices = view.snapshot.node("n1").devices
    assert len(devices) == 8
    assert devices[0].mig_settling and devices[0].free_instances("1g.10gb") == []


def test_cordoned_mig_nodes_are_unschedulable_and_tainted_ones_only_for_tolerating_gangs() -> None:
    cordoned = mig_node("c", spec={"unschedulable": True})
    tainted = mig_node("t", spec={"taints": [{"key": "maintenance", "effect": "NoSchedule"}]})
    view = build_pool_snapshot(SPEC, [cordoned, tainted, mig_node("ok")], [])
    assert {n.name: n.schedulable for n in view.snapshot.nodes.values()} == {"c": False, "t": True, "ok": True}
    gang = make_job("m").replicas(8).mig("1g.10gb").obj()  # seven instances per node
    result = place_gang(view.snapshot, gang, dry_run=True)
    assert not result.ok and "1 untolerated taint" in result.reason
    tolerant = place_gang(view.snapshot, replace(gang, tolerations=(Toleration("maintenance", "Exists"),)),
                          dry_run=True)
    assert tolerant.placement is not None and set(tolerant.placement.nodes) == {"t", "ok"}


def test_an_unreadable_geometry_annotation_means_whole_devices() -> None:
    for raw in ("[]", "{", '{"0": 5}', '{"x": []}'):
        obj = node("n1")
        obj["metadata"]["annotations"][GEOMETRY_ANNOTATION] = raw
        assert read_geometry(obj) == {}
        view = build_pool_snapshot(SPEC, [obj], [])
        assert [d.mig for d in view.snapshot.node("n1").devices] == [{}] * 8


class FakeIO:
    def __init__(self) -> None:
        self.configmap: dict[str, str] = {}
        self.patches: list[tuple[str, Any]] = []

    def read_configmap(self, ns: str, name: str) -> dict[str, Any] | None:
        return {"data": dict(self.configmap)} if self.configmap else None

    def put_configmap(self, ns: str, name: str, data: Any) -> None:
        self.configmap = dict(data)

    def patch_node(self, name: str, body: Any) -> None:
        self.patches.append((name, body))


class Events:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def record(self, obj: Any, type_: Any, reason: str, message: str) -> None:
        self.reasons.append(reason)


def test_a_repartition_is_sent_and_assumed_as_being_applied_until_the_watch_shows_the_node() -> None:
    io, events = FakeIO(), Events()
    cached = node("n1")
    cached["metadata"]["resourceVersion"] = "5"
    meant = send_repartition(io, events, "wanka", cached, NodeGeometry("n1", SEVEN, 8))
    (name, body), = io.patches
    assert name == "n1" and body["metadata"]["resourceVersion"] == "5"
    assert body["metadata"]["labels"][CONFIG_LABEL] == config_name(SEVEN)
    entries = yaml.safe_load(io.configmap["config.yaml"])["mig-configs"][config_name(SEVEN)]
    assert entries == [{"devices": [1, 2, 3, 4, 5, 6, 7], "mig-enabled": False},
                       {"devices": [0], "mig-enabled": True, "mig-devices": {"1g.10gb": 7}}]
    assert events.reasons == ["MIGRepartition"]
    assert cached["metadata"]["labels"].get(CONFIG_LABEL) is None, "the watched node is not mutated"

    # Assumed in the cache: the pass plans as if the change were being applied.
    cache = FleetCache()
    cache.observe("nodes", "ADDED", cached)
    cache.store("nodes").assume(meant, upto=6)
    view = build_pool_snapshot(SPEC, cache.store("nodes").values(), [])
    dev = view.snapshot.node("n1").devices[0]
    assert dev.mig == {s: "1g.10gb" for s in range(7)} and dev.mig_settling
    # The watch brings the node back changed: the node itself says what it is from now on.
    cache.observe("nodes", "MODIFIED", {**cached, "metadata": {**cached["metadata"], "resourceVersion": "6"}})
    view = build_pool_snapshot(SPEC, cache.store("nodes").values(), [])
    assert view.snapshot.node("n1").devices[0].mig == {}


# --- the job loop: a MIG pool goes through the one cycle ----------------------------------


class LoopIO(FakeIO):
    """FakeIO plus the job-status writes the job loop makes."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: dict[str, dict[str, Any]] = {}

    def patch_status(self, ns: str, name: str, version: str | None, status: Any) -> str:
        self.statuses[name] = dict(status)
        return str(int(version or 0) + 1)


def mig_job(name: str, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "1",
                     "creationTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["wanka.io/finalizer"]},
        "spec": {"pool": "p", "queue": "q", "replicas": 2, "resources": {"migProfile": "1g.10gb"},
                 "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}},
        "status": {"phase": "Queued", **status},
    }


def job_loop(nodes: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> tuple[JobReconciler, LoopIO]:
    cache = FleetCache()
    cache.replace("gpupools", [{"metadata": {"name": "p"}, "spec": SPEC.wire()}])
    cache.replace("tenantqueues", [{"metadata": {"name": "q"},
                                    "spec": {"namespaces": ["ns"], "quotas": [{"pool": "p", "gpus": 8}]}}])
    cache.replace("nodes", nodes)
    cache.replace("trainingjobs", jobs)
    io = LoopIO()
    return JobReconciler(cache, io, Events(), clock=lambda: 1.8e9), io  # type: ignore[arg-type]


def admitted(io: LoopIO, job: str) -> dict[str, Any]:
    return next(c for c in io.statuses[job]["conditions"] if c["type"] == "Admitted")


def test_a_mig_gang_skips_the_cordoned_node_and_takes_instances_on_the_other() -> None:
    loop, io = job_loop([mig_node("cordoned", spec={"unschedulable": True}), mig_node("ok")], [mig_job("j")])
    loop.reconcile_all()
    assert io.statuses["j"]["phase"] == "Admitted", io.statuses["j"]
    assert [(p["node"], p["devices"], p["migStart"]) for p in io.statuses["j"]["placement"]] == [
        ("ok", [0], 0), ("ok", [0], 1)]
    assert io.patches == [], "free instances served the gang: nothing repartitioned"


def test_a_blocked_mig_gang_repartitions_an_idle_device_and_says_so() -> None:
    cordoned = mig_node("cordoned", spec={"unschedulable": True})
    whole = node("whole", gpus=8)
    loop, io = job_loop([cordoned, whole], [mig_job("j")])
    loop.reconcile_all()
    assert [name for name, _ in io.patches] == ["whole"], "never the cordoned node"
    cond = admitted(io, "j")
    assert (cond["status"], cond["reason"]) == ("False", "MIGRepartitioning")
    assert "on whole to create 1g.10gb" in cond["message"]
    # The watch has not brought the node back: the next pass does not send the change again.
    loop.cache.replace("trainingjobs", [mig_job("j", conditions=[cond])])
    loop.reconcile_all()
    assert len(io.patches) == 1
