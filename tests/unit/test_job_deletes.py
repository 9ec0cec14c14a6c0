"""A deleted job's cleanup is sent once, not on every pass while the watch catches up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wanka.cluster.cache import FleetCache
from wanka.cluster.jobio import FINALIZER
from wanka.cluster.jobs import DELETE_RESEND_SECONDS, JobReconciler


class RecordingIO:
    """Stands in for JobIO: records the calls the job loop makes (no API behind it)."""

    def __init__(self) -> None:
        self.pod_deletes: list[str] = []
        self.owned_deletes: list[str] = []
        self.finalizers: list[list[str]] = []

    def delete_pod(self, ns: str, name: str, grace: int | None = None) -> None:
        self.pod_deletes.append(name)

    def delete_owned(self, ns: str, job: str, names: Mapping[str, str]) -> None:
        self.owned_deletes.append(job)

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


def member(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"gone-{i}", "namespace": "ns", "uid": f"pod-{i}",
                         "labels": {"wanka.io/job": "gone", "wanka.io/replica": str(i)}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}, "status": {"phase": "Running"}}


def test_cleanup_is_sent_once_then_again_only_after_the_resend_interval() -> None:
    cache = FleetCache()
    cache.replace("trainingjobs", [deleted_job()])
    cache.replace("pods", [member(0), member(1)])
    io = RecordingIO()
    clock = [1000.0]
    loop = JobReconciler(cache, io, Events(), clock=lambda: clock[0])  # type: ignore[arg-type]

    loop.reconcile_all()
    assert sorted(io.pod_deletes) == ["gone-0", "gone-1"] and io.owned_deletes == ["gone"]
    clock[0] += 1
    loop.reconcile_all()  # the watch has not shown the deletes yet: nothing is sent again
    assert len(io.pod_deletes) == 2 and io.owned_deletes == ["gone"]

    # One pod now shows it is terminating; the other still does not, long after: resent once.
    terminating = member(0)
    terminating["metadata"]["deletionTimestamp"] = "2026-11-22T10:00:01Z"
    cache.replace("pods", [terminating, member(1)])
    clock[0] += DELETE_RESEND_SECONDS
    loop.reconcile_all()
    assert io.pod_deletes[2:] == ["gone-1"] and io.owned_deletes == ["gone"]

    # Pods gone: the finalizer comes off, and the memos are forgotten with the objects.
    cache.replace("pods", [])
    loop.reconcile_all()
    assert io.finalizers == [[]]
    cache.replace("trainingjobs", [])
    loop.reconcile_all()
    assert not loop._pod_deletes and not loop._objects_released
