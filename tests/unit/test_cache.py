"""The cache assumes what the operator wrote until the watch shows it, never mutates what it
holds, and (as a failpoint) can deliver watch events late."""

from __future__ import annotations

import copy
import time
from typing import Any

from tests.objects import make_node, make_pod, make_training_job
from wanka.cluster.cache import ASSUME_SECONDS, FleetCache
from wanka.cluster.jobs import JobReconciler


def with_version(body: dict[str, Any], version: int, **status: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["metadata"]["resourceVersion"] = str(version)
    out["status"] = {**out.get("status", {}), **status}
    return out


def test_an_assumed_write_wins_over_older_watch_events_until_the_watch_catches_up() -> None:
    mono = [0.0]
    cache = FleetCache(clock=lambda: mono[0])
    store = cache.store("trainingjobs")
    base = make_training_job("j").queued().obj()
    cache.observe("trainingjobs", "ADDED", with_version(base, 5))
    store.assume(with_version(base, 7, phase="Admitted"))
    assert store.get("ns", "j")["status"]["phase"] == "Admitted"  # type: ignore[index]
    cache.observe("trainingjobs", "MODIFIED", with_version(base, 6, phase="Queued"))  # a lagging event
    assert store.get("ns", "j")["status"]["phase"] == "Admitted"  # type: ignore[index]
    assert [o["status"]["phase"] for o in store.values()] == ["Admitted"]
    cache.observe("trainingjobs", "MODIFIED", with_version(base, 8, phase="Running"))
    assert store.get("ns", "j")["status"]["phase"] == "Running"  # type: ignore[index]
    assert not store.assumed


def test_an_assumption_the_watch_never_confirms_is_forgotten_after_a_bound() -> None:
    mono = [0.0]
    cache = FleetCache(clock=lambda: mono[0])
    store = cache.store("pods")
    pod = {"metadata": {"name": "p", "namespace": "ns", "resourceVersion": "3"}}
    cache.observe("pods", "ADDED", pod)
    store.assume({**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}, upto=4)
    assert store.get("ns", "p")["metadata"].get("deletionTimestamp")  # type: ignore[index]
    mono[0] += ASSUME_SECONDS + 1
    assert "deletionTimestamp" not in store.get("ns", "p")["metadata"]  # type: ignore[index]


def test_created_objects_survive_a_relist_that_predates_them_but_changes_do_not() -> None:
    cache = FleetCache()
    pods = cache.store("pods")
    pods.assume({"metadata": {"name": "new", "namespace": "ns", "resourceVersion": "9"}}, created=True)
    pods.assume({"metadata": {"name": "old", "namespace": "ns", "resourceVersion": "2"}}, upto=3)
    cache.replace("pods", [])
    assert pods.get("ns", "new") is not None
    assert pods.get("ns", "old") is None
    cache.observe("pods", "DELETED", {"metadata": {"name": "new", "namespace": "ns"}})
    assert pods.get("ns", "new") is None


class VersionedIO:
    """Stands in for JobIO: every status patch succeeds with the next version."""

    def __init__(self) -> None:
        self.version = 100
        self.patches: list[dict[str, Any]] = []

    def patch_status(self, ns: str, name: str, version: str | None, status: dict[str, Any]) -> str:
        self.patches.append(status)
        self.version += 1
        return str(self.version)


class Events:
    def record(self, obj: Any, type_: Any, reason: str, message: str) -> None:
        pass


def test_a_pass_never_mutates_cached_objects_and_does_not_rewrite_its_own_status() -> None:
    cache = FleetCache()
    body = make_training_job("j").obj()  # no status yet: the pass queues it
    cache.observe("trainingjobs", "ADDED", body)
    watched = copy.deepcopy(cache.store("trainingjobs").objects[("ns", "j")])
    io = VersionedIO()
    loop = JobReconciler(cache, io, Events(), clock=lambda: 5000.0)  # type: ignore[arg-type]
    loop.reconcile_all()
    # Queued and the cycle's verdict on it in one write: a new job is offered a placement at once.
    assert [(p["phase"], p["conditions"][0]["reason"]) for p in io.patches] == [("Queued", "NoPool")]
    assert cache.store("trainingjobs").objects[("ns", "j")] == watched, "the watched object was changed"
    loop.reconcile_all()  # the watch lags: the pass decides on its own write...
    loop.reconcile_all()  # ...and does not write the same again
    assert len(io.patches) == 1


def test_a_lagging_watch_delivers_events_late_and_in_order() -> None:
    cache = FleetCache(lag_seconds=0.3)
    for i in range(3):
        cache.observe("nodes", "ADDED", {"metadata": {"name": "n", "resourceVersion": str(i)}})
    assert cache.store("nodes").get("", "n") is None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and cache.store("nodes").get("", "n") is None:
        time.sleep(0.05)
    time.sleep(0.1)  # let the later events of the same batch land
    assert cache.store("nodes").get("", "n")["metadata"]["resourceVersion"] == "2"  # type: ignore[index]


def test_a_change_assumed_after_the_object_was_deleted_leaves_no_phantom() -> None:
    # The watch's DELETED (a terminal pod goes at once) can land before the deleter assumes
    # "terminating": the assumption must not bring the pod back.
    cache = FleetCache()
    pods = cache.store("pods")
    pod = {"metadata": {"name": "p", "namespace": "ns", "resourceVersion": "3"}}
    cache.observe("pods", "ADDED", pod)
    cache.observe("pods", "DELETED", pod)
    pods.assume({**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}, upto=4)
    assert pods.get("ns", "p") is None and pods.values() == []


def test_a_new_term_forgets_every_assumption() -> None:
    cache = FleetCache()
    pod = {"metadata": {"name": "p", "namespace": "ns", "resourceVersion": "3"}}
    cache.observe("pods", "ADDED", pod)
    cache.store("pods").assume({**pod, "status": {"phase": "Mine"}}, upto=4)
    cache.forget()
    assert cache.store("pods").get("ns", "p") == pod


def test_the_cache_keeps_no_managed_fields_or_last_applied_copies() -> None:
    cache = FleetCache()
    body = {"metadata": {"name": "n", "resourceVersion": "3", "managedFields": [{"manager": "kubectl"}],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}",
                                         "wanka.io/health": "{}"}},
            "spec": {}}
    original = copy.deepcopy(body)
    cache.observe("nodes", "ADDED", body)
    cached = cache.store("nodes").get("", "n")
    assert cached is not None
    assert "managedFields" not in cached["metadata"]
    assert cached["metadata"]["annotations"] == {"wanka.io/health": "{}"}
    assert body == original, "the watched body itself is left alone"
    cache.replace("nodes", [{**original, "metadata": {**original["metadata"], "resourceVersion": "4"}}])
    assert "managedFields" not in cache.store("nodes").get("", "n")["metadata"]


class LandsMidPass:
    """A StatusWriter through which a watch event lands while a pass is still running (after it
    read the stores): once armed, the next queue status it writes lets `body` arrive."""

    def __init__(self, cache: FleetCache) -> None:
        self.cache = cache
        self.body: dict[str, Any] = {}

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> bool:
        if self.body:
            self.cache.observe("trainingjobs", "ADDED", self.body)
            self.body = {}
        return True


def test_an_event_that_lands_during_a_quiet_pass_is_acted_on_by_the_next_pass() -> None:
    # A pass that leaves every job settled lets the next ones skip until something changes. A
    # job created while such a pass was finishing must not count as seen: it would wait for
    # the skip to expire (up to a minute) before it is even queued.
    cache = FleetCache()
    cache.observe("nodes", "ADDED", make_node("n1").obj())
    cache.observe("trainingjobs", "ADDED", make_training_job("a").running(("n1", [0, 1, 2, 3, 4, 5, 6, 7])).obj())
    cache.observe("pods", "ADDED", make_pod("a", 0).on("n1").running().obj())
    queue = {"apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue",
             "metadata": {"name": "q", "resourceVersion": "1", "generation": 1},
             "spec": {"namespaces": ["ns"], "quotas": [{"pool": "p", "gpus": 8}]}}
    cache.observe("tenantqueues", "ADDED", queue)
    io, writer = VersionedIO(), LandsMidPass(cache)
    loop = JobReconciler(cache, io, Events(), clock=lambda: 5000.0, status_writer=writer)  # type: ignore[arg-type]
    for _ in range(3):
        loop.reconcile_all()
    assert loop._idle is not None, "the running job is settled: the loop rests"
    # The queue changes (its status is written again), and during that pass a job arrives.
    queue["metadata"] = {**queue["metadata"], "resourceVersion": "2", "generation": 2}
    cache.observe("tenantqueues", "MODIFIED", queue)
    writer.body = make_training_job("late").obj()
    loop.reconcile_all()
    assert cache.store("trainingjobs").get("ns", "late") is not None  # it landed during that pass
    before = len(io.patches)
    loop.reconcile_all()
    # The next pass steps it: Queued, with the cycle's verdict (its pool does not exist).
    assert [p["phase"] for p in io.patches[before:]] == ["Queued"]
