"""The pool pass counts the reservation ledger: a gang reserved but not yet bound is not free."""

from __future__ import annotations

from typing import Any

from tests.unit.test_translate_accounting import node, pod
from wanka.cluster.cache import FleetCache
from wanka.cluster.ledger import raw_ledger
from wanka.cluster.pools import PoolReconciler
from wanka.core.snapshot import DeviceShare

POOL = {"apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool",
        "metadata": {"name": "p", "generation": 1, "resourceVersion": "1"},
        "spec": {"nodeSelector": {"matchLabels": {"wanka.io/pool": "p"}},
                 "topology": {"levels": ["wanka.io/rack"]}}}


def training_job(name: str, phase: str, placement: list[dict[str, Any]], version: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": version,
                     "generation": 1},
        "spec": {"pool": "p", "queue": "q", "replicas": len(placement), "resources": {"gpus": 8},
                 "template": {"spec": {"containers": [{"name": "c", "image": "x",
                                                      "resources": {"requests": {"cpu": "4"}}}]}}},
        "status": {"phase": phase, "placement": placement},
    }


class Writer:
    def __init__(self) -> None:
        self.status: dict[str, Any] = {}

    def patch_status(self, plural: str, namespace: str, name: str, status: Any) -> bool:
        self.status[name] = status
        return True


class Events:
    def record(self, obj: Any, type_: Any, reason: str, message: str) -> None:
        pass


def run(jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> dict[str, Any]:
    cache = FleetCache()
    cache.replace("nodes", [node("n1"), node("n2")])
    cache.replace("gpupools", [POOL])
    cache.replace("trainingjobs", jobs)
    cache.replace("pods", pods)
    writer = Writer()
    PoolReconciler(cache, writer, Events()).reconcile_all()
    return writer.status["p"]


def test_a_reserved_gang_counts_as_allocated_before_its_pods_exist() -> None:
    placed = [{"replica": 0, "node": "n1", "devices": list(range(8))}]
    status = run([training_job("a", "Admitted", placed)], [])
    assert status["gpus"]["allocated"] == 8 and status["gpus"]["free"] == 8


def test_a_bound_member_and_its_reservation_are_one_allocation() -> None:
    placed = [{"replica": 0, "node": "n1", "devices": list(range(8))}]
    member = pod("a-0", "n1", 8, labels={"wanka.io/job": "a", "wanka.io/replica": "0"},
                 annotations={"wanka.io/devices": "0,1,2,3,4,5,6,7"})
    status = run([training_job("a", "Running", placed)], [member])
    assert status["gpus"]["allocated"] == 8 and status["gpus"]["free"] == 8
    assert not any(c["type"] == "Overcommitted" and c["status"] == "True" for c in status["conditions"])


def test_finished_and_queued_jobs_hold_nothing() -> None:
    placed = [{"replica": 0, "node": "n1", "devices": list(range(8))}]
    for phase in ("Succeeded", "Failed", "Queued", "Restarting"):
        assert raw_ledger(training_job("a", phase, placed)) == []
    garbled = training_job("g", "Admitted", [{"replica": -1, "node": "n1"}])
    assert raw_ledger(garbled) == [], "an unreadable status holds nothing and raises nothing"
    status = run([training_job("a", "Succeeded", placed), garbled], [])
    assert status["gpus"]["allocated"] == 0


def test_a_mig_reservation_holds_its_instance_at_the_quota_share() -> None:
    mig = training_job("m", "Admitted", [{"replica": 0, "node": "n1", "devices": [2], "migStart": 4}])
    mig["spec"]["resources"] = {"migProfile": "3g.40gb"}
    (alloc,) = raw_ledger(mig)
    assert alloc.devices == (DeviceShare(2, 428, mig_start=4),)
    assert alloc.cpu_milli == 4000
