"""A deleted job's cleanup is sent once, not on every pass while the watch catches up; pods
that cannot stop (their node is gone) are force-deleted instead of waited for; a large gang's
pods are deleted side by side."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from wanka.cluster.cache import ASSUME_SECONDS, FleetCache
from wanka.cluster.jobio import FINALIZER
from wanka.cluster.jobs import JobReconciler


class RecordingIO:
    """Stands in for JobIO: records the calls the job loop makes (no API behind it)."""

    def __init__(self) -> None:
        self.pod_deletes: list[tuple[str, int | None]] = []
        self.owned_deletes: list[str] = []
        self.owned_kinds: list[list[str]] = []
        self.finalizers: list[list[str]] = []

    def delete_pod(self, ns: str, name: str, grace: int | None = None) -> None:
        self.pod_deletes.append((name, grace))

    def delete_owned(self, ns: str, job: str, names: Mapping[str, str]) -> None:
        self.owned_deletes.append(job)
        self.owned_kinds.append(sorted(names))

    def set_finalizers(self, ns: str, name: str, version: str | None, finalizers: list[str]) -> None:
        self.finalizers.append(finalizers)


class Events:
    def record(self, obj: Any, type_: Any, reason: str, message: str) -> None:
        pass


def deleted_job() -> dict[str, Any]:
    return {
        "apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "gone", "namespace": "ns", "uid": "job-uid", "resourceVersion": "5",
                     "deletionTimestamp": "2026-11-22T10:00:00Z", "finalizers": [FINALIZER]},
        "spec": {"pool": "p", "queue": "q", "replicas": 2, "resources": {"gpus": 8},
                 "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}},
        "status": {"phase": "Running"},
    }


def member(i: int, node: str = "n1") -> dict[str, Any]:
    return {"metadata": {"name": f"gone-{i}", "namespace": "ns", "uid": f"pod-{i}", "resourceVersion": str(10 + i),
                         "labels": {"wanka.io/job": "gone", "wanka.io/replica": str(i)}},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]}, "status": {"phase": "Running"}}


def ready_node(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def test_cleanup_is_sent_once_then_again_only_after_the_assumption_expires() -> None:
    mono = [0.0]
    cache = FleetCache(clock=lambda: mono[0])
    cache.replace("trainingjobs", [deleted_job()])
    cache.replace("pods", [member(0), member(1)])
    cache.replace("nodes", [ready_node("n1")])
    io = RecordingIO()
    loop = JobReconciler(cache, io, Events(), clock=lambda: 1000.0)  # type: ignore[arg-type]

    loop.reconcile_all()
    assert sorted(io.pod_deletes) == [("gone-0", None), ("gone-1", None)]
    assert io.owned_deletes == [] and io.finalizers == []  # pods may still run: keep everything
    loop.reconcile_all()  # the watch has not shown the deletes yet: nothing is sent again
    assert len(io.pod_deletes) == 2

    # One pod now shows it is terminating; the other never does: resent once the bound passes.
    terminating = member(0)
    terminating["metadata"]["deletionTimestamp"] = "2026-11-22T10:00:01Z"
    terminating["metadata"]["resourceVersion"] = "20"
    cache.replace("pods", [terminating, member(1)])
    mono[0] += ASSUME_SECONDS + 1
    loop.reconcile_all()
    assert io.pod_deletes[2:] == [("gone-1", None)]

    # Pods gone: the job's objects are deleted once and the finalizer comes off.
    cache.replace("pods", [])
    loop.reconcile_all()
    assert io.finalizers == [[]] and io.owned_deletes == ["gone"]


def test_pods_on_a_vanished_node_are_force_deleted_and_do_not_hold_the_finalizer() -> None:
    cache = FleetCache()
    cache.replace("trainingjobs", [deleted_job()])
    cache.replace("pods", [member(0, node="dead"), member(1, node="dead")])
    io = RecordingIO()
    loop = JobReconciler(cache, io, Events(), clock=lambda: 1000.0)  # type: ignore[arg-type]
    loop.reconcile_all()
    assert sorted(io.pod_deletes) == [("gone-0", 0), ("gone-1", 0)]
    assert io.finalizers == [[]] and io.owned_deletes == ["gone"]


class MeetingIO(RecordingIO):
    """Each pod delete waits until `parties` of them are under way at once: deletes sent one
    after another never get there, and fail."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.meeting = threading.Barrier(parties, timeout=5)
        self.lock = threading.Lock()

    def delete_pod(self, ns: str, name: str, grace: int | None = None) -> None:
        self.meeting.wait()
        with self.lock:
            super().delete_pod(ns, name, grace)


def test_a_large_gang_s_pods_are_deleted_side_by_side() -> None:
    # 512 members deleted one by one took 15 s on the local control plane.
    job = deleted_job()
    job["spec"]["replicas"] = 16
    cache = FleetCache()
    cache.replace("trainingjobs", [job])
    cache.replace("pods", [member(i) for i in range(16)])
    cache.replace("nodes", [ready_node("n1")])
    io = MeetingIO(parties=8)
    loop = JobReconciler(cache, io, Events(), clock=lambda: 1000.0)  # type: ignore[arg-type]
    loop.reconcile_all()
    assert sorted(io.pod_deletes) == sorted((f"gone-{i}", None) for i in range(16))
    assert not io.meeting.broken


def test_a_deleted_job_asks_to_delete_only_what_it_can_own() -> None:
    # A sweep's trial (one replica, no checkpoint report) owns nothing besides its pod: its
    # deletion sends no DELETE for a Service, report or RBAC that were never made.
    for replicas, resume, kinds in ((1, "Never", None), (2, "Never", ["Service"]),
                                    (1, "Auto", ["Role", "RoleBinding", "ServiceAccount", "TrainingJobProgress"])):
        job = deleted_job()
        job["spec"]["replicas"] = replicas
        job["spec"]["checkpoint"] = {"resume": resume}
        cache = FleetCache()
        cache.replace("trainingjobs", [job])
        io = RecordingIO()
        JobReconciler(cache, io, Events(), clock=lambda: 1000.0).reconcile_all()  # type: ignore[arg-type]
        assert io.finalizers == [[]], (replicas, resume)
        assert io.owned_kinds == ([kinds] if kinds else []), (replicas, resume)
