"""The operator's own cost per pass, with the API taken out: 1,250 nodes, 2,000 one-GPU jobs.

The three loops (health, jobs, pools) run exactly as `wanka run` runs them, against a loopback
that stands in for the API server and kwok: every write lands in the cache at once, as a watch
would deliver it, and a bound pod is Running and Ready. What is left is Python: parsing,
deciding, planning. Prints JSON:

- `burst`: N jobs created at once -> all Running: passes, CPU seconds (each loop's share),
  and writes by kind (what a real API server would have to take);
- `idle_pass_ms`: one pass with those N jobs running and nothing changed (median of 20),
  each loop's share: what the operator spends every second on a quiet fleet;
- `member_failure`: with those N jobs running, one member of a 4 x 8 gang fails: the passes
  until the whole gang runs again, and their CPU seconds (each loop's share);
- `plain_pods`: then N plain 1-GPU pods (`schedulerName: wanka`), in 20 waves with a pass
  after each: the passes until every one is bound, and their CPU seconds.

    .venv/bin/python bench/bench_pass.py [--nodes 1250] [--jobs 2000] [--profile idle|failure|pods] [--default-gc]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import itertools
import json
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from wanka.cluster.cache import FleetCache  # noqa: E402
from wanka.cluster.dev import node_manifest  # noqa: E402
from wanka.cluster.health import HealthReconciler  # noqa: E402
from wanka.cluster.jobio import Conflict  # noqa: E402
from wanka.cluster.jobs import JobReconciler  # noqa: E402
from wanka.cluster.pools import PoolReconciler  # noqa: E402
from wanka.controllers.main import tune_gc  # noqa: E402

NS = "scale"


class Loopback:
    """The API server and kwok in one: writes go straight into the cache."""

    def __init__(self, cache: FleetCache) -> None:
        self.cache = cache
        self.rv = itertools.count(10_000)
        self.writes: Counter[str] = Counter()

    def _put(self, kind: str, obj: dict[str, Any], event: str = "MODIFIED") -> dict[str, Any]:
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(next(self.rv))}}
        self.cache.observe(kind, event, obj)
        return obj

    def _job(self, ns: str, name: str, version: str | None) -> dict[str, Any]:
        cur = self.cache.store("trainingjobs").objects.get((ns, name))
        if cur is None or (version and cur["metadata"]["resourceVersion"] != version):
            raise Conflict(f"{ns}/{name}")
        return cur

    # JobIO
    def patch_status(self, ns: str, name: str, version: str | None, status: Mapping[str, Any]) -> str:
        self.writes["job status"] += 1
        cur = self._job(ns, name, version)
        return str(self._put("trainingjobs", {**cur, "status": dict(status)})["metadata"]["resourceVersion"])

    def set_finalizers(self, ns: str, name: str, version: str | None, finalizers: list[str]) -> None:
        self.writes["job finalizer"] += 1
        cur = self._job(ns, name, version)
        self._put("trainingjobs", {**cur, "metadata": {**cur["metadata"], "finalizers": finalizers}})

    def ensure(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        self.writes[f"create {obj['kind']}"] += 1
        if obj["kind"] != "Pod":
            return None
        pod = {**obj, "metadata": {**obj["metadata"], "uid": obj["metadata"]["name"]}, "status": {"phase": "Pending"}}
        if pod["spec"].get("nodeName"):
            pod["status"] = running_status()
        return self._put("pods", pod, "ADDED")

    def bind(self, ns: str, pod: str, node: str) -> str | None:
        self.writes["bind"] += 1
        cur = self.cache.store("pods").objects[(ns, pod)]
        self._put("pods", {**cur, "spec": {**cur["spec"], "nodeName": node}, "status": running_status()})
        return None

    def pod_condition(self, ns: str, name: str, condition: Mapping[str, Any]) -> None:
        self.writes["pod condition"] += 1

    def delete_pod(self, ns: str, name: str, grace: int | None = None) -> None:
        self.writes["delete pod"] += 1
        cur = self.cache.store("pods").objects.get((ns, name))
        if cur is not None:
            self.cache.observe("pods", "DELETED", cur)

    def delete_owned(self, ns: str, job: str, names: Mapping[str, str]) -> None:
        self.writes["delete owned"] += len(names)

    def patch_node(self, name: str, body: Mapping[str, Any]) -> None:
        self.writes["node patch"] += 1
        cur = self.cache.store("nodes").objects[("", name)]
        meta = {**cur["metadata"]}
        if (body.get("metadata") or {}).get("annotations"):
            meta["annotations"] = {**(meta.get("annotations") or {}), **body["metadata"]["annotations"]}
        spec = {**(cur.get("spec") or {}), **(body.get("spec") or {})}
        self._put("nodes", {**cur, "metadata": meta, "spec": spec})

    def read_configmap(self, ns: str, name: str) -> dict[str, Any] | None:
        return None

    def put_configmap(self, ns: str, name: str, data: Mapping[str, str]) -> None:
        self.writes["configmap"] += 1


class Writer:
    """StatusWriter of pools and queues."""

    def __init__(self, loop: Loopback) -> None:
        self.loop = loop

    def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        self.loop.writes[f"{plural} status"] += 1
        cur = self.loop.cache.store(plural).objects.get((namespace, name))
        if cur is not None:
            self.loop._put(plural, {**cur, "status": dict(status)})
        return True


class Events:
    def __init__(self, loop: Loopback) -> None:
        self.loop = loop

    def record(self, obj: Any, type_: Any, reason: str, message: str) -> None:
        self.loop.writes["event"] += 1


def running_status() -> dict[str, Any]:
    return {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}


def fleet(nodes: int) -> tuple[FleetCache, Loopback]:
    cache = FleetCache()
    loop = Loopback(cache)
    for i in range(nodes):
        node = node_manifest(f"gpu-{i}", 8, "H100-80GB", f"rack-{i // 32}", {"wanka.io/pool": "p"})
        node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        node["metadata"]["uid"] = f"node-{i}"
        loop._put("nodes", node, "ADDED")
    loop._put("gpupools", {"apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool",
                           "metadata": {"name": "p", "uid": "pool", "generation": 1},
                           "spec": {"nodeSelector": {"matchLabels": {"wanka.io/pool": "p"}},
                                    "topology": {"levels": ["wanka.io/rack"]}}}, "ADDED")
    loop._put("tenantqueues", {"apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue",
                               "metadata": {"name": NS, "uid": "queue", "generation": 1},
                               "spec": {"namespaces": [NS], "quotas": [{"pool": "p", "gpus": nodes * 8}]}}, "ADDED")
    loop._put("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "uid": "ns"}}, "ADDED")
    return cache, loop


def job(name: str, replicas: int = 1, gpus: int = 1) -> dict[str, Any]:
    return {"apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": NS, "uid": name, "generation": 1,
                         "creationTimestamp": "2026-12-01T00:00:00Z"},
            "spec": {"pool": "p", "queue": NS, "replicas": replicas, "resources": {"gpus": gpus},
                     "restartPolicy": {"maxRestarts": 10, "backoffSeconds": 0, "maxBackoffSeconds": 0},
                     "template": {"spec": {"terminationGracePeriodSeconds": 0,
                                           "containers": [{"name": "t", "image": "trainer:1"}]}}}}


def plain_pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "uid": name, "creationTimestamp": "2026-12-01T00:00:00Z",
                         "labels": {"wanka.io/queue": NS, "wanka.io/pool": "p"}},
            "spec": {"schedulerName": "wanka", "terminationGracePeriodSeconds": 0, "containers": [
                {"name": "c", "image": "trainer:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            "status": {"phase": "Pending"}}


@contextlib.contextmanager
def profiled(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1250)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--profile", choices=["idle", "failure", "pods"], default="",
                        help="print a cProfile of the idle, member-failure or plain-pod passes to stderr")
    parser.add_argument("--default-gc", action="store_true",
                        help="keep CPython's collector thresholds (`wanka run` raises them)")
    args = parser.parse_args()
    if not args.default_gc:
        tune_gc()  # as `wanka run` does
    cache, loop = fleet(args.nodes)
    events = Events(loop)
    health = HealthReconciler(cache, loop, events)
    jobs = JobReconciler(cache, loop, events, status_writer=Writer(loop))  # type: ignore[arg-type]
    pools = PoolReconciler(cache, Writer(loop), events, guard=health.guard_conditions)
    loops = (("health", health.reconcile_all), ("jobs", jobs.reconcile_all), ("pools", pools.reconcile_all))

    def one_pass(spent: Counter[str]) -> None:
        for name, fn in loops:
            t0 = time.process_time()
            fn()
            spent[name] += time.process_time() - t0

    one_pass(Counter())
    for i in range(args.jobs):
        loop._put("trainingjobs", job(f"s-{i}"), "ADDED")
    loop.writes.clear()
    burst: Counter[str] = Counter()
    passes = 0
    store = cache.store("trainingjobs")
    while passes < 200:
        one_pass(burst)
        passes += 1
        if sum(1 for j in store.values() if (j.get("status") or {}).get("phase") == "Running") == args.jobs:
            break
    idle: list[Counter[str]] = []
    with profiled(args.profile == "idle"):
        for _ in range(20):
            spent: Counter[str] = Counter()
            one_pass(spent)
            idle.append(spent)

    # One member of a 4 x 8 gang fails while the N jobs run: passes until the gang runs again.
    loop._put("trainingjobs", job("victim", 4, 8), "ADDED")
    for _ in range(20):
        one_pass(Counter())
    victim = lambda: store.get(NS, "victim") or {}  # noqa: E731
    assert (victim().get("status") or {}).get("phase") == "Running", victim().get("status")
    member = next(p for p in cache.store("pods").values() if p["metadata"]["name"].startswith("victim-"))
    loop._put("pods", {**member, "status": {"phase": "Failed"}})
    failure: Counter[str] = Counter()
    failure_passes = 0
    with profiled(args.profile == "failure"):
        while failure_passes < 50:
            one_pass(failure)
            failure_passes += 1
            st = victim().get("status") or {}
            if st.get("restarts") == 1 and st.get("phase") == "Running":
                break
    # N plain 1-GPU pods (schedulerName wanka) beside the N jobs, arriving as a burst does on
    # the API server (in 20 waves, a pass after each): passes until every one is bound.
    names = [f"w-{i}" for i in range(args.jobs)]
    pod_cpu: Counter[str] = Counter()
    pod_passes = 0
    pods = cache.store("pods")
    wave = max(1, args.jobs // 20)
    with profiled(args.profile == "pods"):
        for first in range(0, args.jobs, wave):
            for name in names[first:first + wave]:
                loop._put("pods", plain_pod(name), "ADDED")
            one_pass(pod_cpu)
            pod_passes += 1
        while pod_passes < 70 and not all(((pods.get(NS, n) or {}).get("spec") or {}).get("nodeName")
                                          for n in names):
            one_pass(pod_cpu)
            pod_passes += 1
    print(json.dumps({
        "benchmark": "one operator pass with the API taken out",
        "nodes": args.nodes, "jobs": args.jobs,
        "burst": {"passes": passes, "cpu_seconds": round(sum(burst.values()), 3),
                  "by_loop": {k: round(v, 3) for k, v in burst.items()}, "writes": dict(loop.writes)},
        "plain_pods": {"passes": pod_passes, "cpu_seconds": round(sum(pod_cpu.values()), 3),
                       "by_loop": {k: round(v, 3) for k, v in pod_cpu.items()}},
        "member_failure": {"passes": failure_passes, "cpu_seconds": round(sum(failure.values()), 3),
                           "by_loop": {k: round(v, 3) for k, v in failure.items()}},
        "idle_pass_ms": {"median": round(1000 * statistics.median(sum(s.values()) for s in idle), 2),
                         "by_loop": {k: round(1000 * statistics.median(s[k] for s in idle), 2) for k, _ in loops}},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
