"""Wanka at 1,250 nodes (10,000 GPUs) on the local control plane, beside kube-scheduler.

Each run starts a fresh local control plane and measures, in order:

1. `nodes_schedulable_seconds`: from the first of N new kwok nodes being created until every
   one is Ready with no not-ready taint (the controller-manager's work, what any scheduler waits for).
2. `peer_all_running_seconds`: kube-scheduler, built from the same Kubernetes release
   (`hack/build-binaries.sh --scheduler`), client QPS 5,000: P plain 1-GPU pods created at once,
   seconds until every one is Running. Then they are deleted. `peer_jobs_all_running_seconds`: the
   same P trials as batch/v1 Jobs (the controller-manager's Job controller makes each pod,
   kube-scheduler binds it), created at once -> every Job's status counts its pod ready: what a
   user runs a trial as without Wanka, a job object beside each pod. Then kube-scheduler stops.
3. The Wanka operator starts (with the chart's job-finalizer policy, as `helm install` makes it
   on this API server; `--no-finalizer-policy` leaves it out); `pool_ready_seconds`: from the
   GPUPool's creation until its status counts every node healthy (the operator has taken the
   fleet in). `gang_1024_seconds` and `gang_4096_seconds`: one 128 x 8 and one 512 x 8
   TrainingJob, create -> Running; then each is deleted (`gang_1024_deleted_seconds`,
   `gang_4096_deleted_seconds`: delete -> the job and every pod gone). `gangs_100x64_seconds`: 100
   8 x 8 gangs created at once -> all Running (then deleted: `gangs_100x64_deleted_seconds`).
4. `wanka_pods_all_running_seconds`: step 2's P plain pods, now with `schedulerName: wanka` and
   the queue and pool labels, created at once -> all Running (then deleted);
   `ratio_peer_over_wanka_pods` is step 2's time over this one: scheduler against scheduler.
   `wanka_all_running_seconds`: P one-replica 1-GPU TrainingJobs created at once -> all Running
   (a sweep's trials: `checkpoint.resume: Never`, so no progress report; `--small-resume Auto`);
   `ratio_peer_over_wanka` is step 2's pod time over this one, and `ratio_peer_jobs_over_wanka`
   step 2's Job time over it, within the same run.
5. With those P jobs running: `member_failure_seconds` (one member of a 4 x 8 gang fails ->
   the whole gang Running again, backoff 0), then `operator_idle_cpu_percent` (of one core, over
   30 s with nothing happening) and `operator_peak_rss_mib` (the operator's high-water mark).

Every figure is reported as the median over the runs, with min, max and each run's value.
Times are taken from watch streams (not polls), in this process's monotonic clock. Each burst
also reports every process's CPU seconds from its first create until it is all Running.

    make bench-scale                      # 3 runs at 1,250 nodes and 2,000 jobs (about 20 min)
    .venv/bin/python bench/bench_scale.py --runs 1 --nodes 250 --jobs 400   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

import yaml  # noqa: E402
from kubernetes import client  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from wanka.cluster.dev import node_manifest  # noqa: E402
from wanka.cluster.devenv import apply_manifests, install_crds, render_chart, start_operator  # noqa: E402
from wanka.cluster.kube import MERGE_PATCH, api_client, request_json  # noqa: E402
from wanka.cluster.localcluster import BUILD_SCRIPT, LocalCluster, free_port  # noqa: E402
from wanka.cluster.watch import events  # noqa: E402

POOL = "scale"
NS = "scale"
PEER_NS = "peer"
GROUP_PATH = "/apis/wanka.io/v1alpha1"
CLIENTS = 16  # concurrent creators, for both schedulers alike
MAP_API = "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"

Predicate = Callable[[dict[str, Any]], bool]


def log(message: str) -> None:
    print(f"[bench-scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Watch:
    """A watch of one collection in a thread: when each object first satisfied `pred`, and
    which objects exist now. Raw JSON, so this process's own cost stays small."""

    def __init__(self, api: client.ApiClient, path: str, pred: Predicate) -> None:
        self.api, self.path, self.pred = api, path, pred
        self.first: dict[str, float] = {}  # name -> monotonic time it first satisfied pred
        self.now: dict[str, bool] = {}  # name -> satisfies pred now (present objects only)
        self.lost: set[str] = set()  # names that satisfied pred, then stopped to
        self.cond = threading.Condition()
        self.stopped = False
        listed = request_json(api, "GET", path, query=[("limit", "1")])
        self.version = str(listed["metadata"]["resourceVersion"])
        for item in request_json(api, "GET", path)["items"]:
            self._see("ADDED", item)
        threading.Thread(target=self._run, daemon=True, name=f"watch {path}").start()

    def _see(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self.cond:
            if kind == "DELETED":
                self.now.pop(name, None)
            else:
                ok = bool(self.pred(obj))
                if self.now.get(name) and not ok:
                    self.lost.add(name)
                self.now[name] = ok
                if ok and name not in self.first:
                    self.first[name] = time.monotonic()
            self.cond.notify_all()

    def _run(self) -> None:
        while not self.stopped:
            try:
                resp = self.api.call_api(
                    self.path, "GET", query_params=[("watch", "true"), ("resourceVersion", self.version),
                                                    ("allowWatchBookmarks", "true"), ("timeoutSeconds", "300")],
                    header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
                    _preload_content=False, _return_http_data_only=True, _request_timeout=(5, 330))
                for event in events(resp.stream(64 * 1024, decode_content=True)):
                    obj = event.get("object") or {}
                    self.version = str((obj.get("metadata") or {}).get("resourceVersion") or self.version)
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._see(event["type"], obj)
            except Exception as exc:  # a dropped stream: resume from the last version seen
                if not self.stopped:
                    log(f"watch {self.path} restarted: {type(exc).__name__}")
                    time.sleep(0.2)

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what}: not done within {timeout:.0f}s")
                self.cond.wait(min(left, 1.0))

    def satisfied(self, names: Iterable[str]) -> int:
        return sum(1 for n in names if self.now.get(n))

    def last_first(self, names: Iterable[str]) -> float:
        return max(self.first[n] for n in names)

    def stop(self) -> None:
        self.stopped = True


def running(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") == "Running"


def schedulable(node: dict[str, Any]) -> bool:
    st = node.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
    taints = (node.get("spec") or {}).get("taints") or []
    return ready and not any(t.get("key", "").startswith("node.kubernetes.io/") for t in taints)


def parallel(fn: Callable[[Any], Any], items: list[Any]) -> None:
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(fn, items))


def post(api: client.ApiClient, path: str, body: dict[str, Any]) -> None:
    try:
        request_json(api, "POST", path, body)
    except ApiException as exc:
        if exc.status != 409:
            raise


def burst(api: client.ApiClient, path: str, bodies: list[dict[str, Any]], up: Watch, meter: CpuMeter,
          prefix: str, what: str) -> dict[str, float]:
    """Create `bodies` at once; when the last of them satisfies `up`'s predicate. The CPU of
    every process is metered from the first create to then, never over a deletion."""
    names = [b["metadata"]["name"] for b in bodies]
    before = meter.read()
    start = time.monotonic()
    parallel(lambda b: post(api, path, b), bodies)
    created = time.monotonic() - start
    up.wait(lambda: up.satisfied(names) == len(names), 900, what)
    return {**meter.since(before, prefix), f"{prefix}_created_seconds": created,
            f"{prefix}_all_running_seconds": up.last_first(names) - start, "start": start}


def delete_all(api: client.ApiClient, path: str) -> None:
    request_json(api, "DELETE", path, {"gracePeriodSeconds": 0, "propagationPolicy": "Background"})


def namespace(api: client.ApiClient, name: str) -> None:
    post(api, "/api/v1/namespaces", {"metadata": {"name": name}})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # pods need the namespace's default ServiceAccount
        try:
            request_json(api, "GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
            return
        except ApiException:
            time.sleep(0.2)
    raise TimeoutError(f"namespace {name} has no default ServiceAccount")


# --- the steps ---------------------------------------------------------------------------------
def make_nodes(api: client.ApiClient, count: int) -> float:
    racks = max(1, count // 32)
    per_rack = -(-count // racks)
    names = [f"gpu-{i}" for i in range(count)]
    watch = Watch(api, "/api/v1/nodes", schedulable)
    start = time.monotonic()
    parallel(lambda i: post(api, "/api/v1/nodes", node_manifest(
        names[i], 8, "H100-80GB", f"rack-{i // per_rack}", {"wanka.io/pool": POOL})), list(range(count)))
    log(f"{count} nodes created in {time.monotonic() - start:.1f}s")
    watch.wait(lambda: watch.satisfied(names) == count, 600, "nodes schedulable")
    watch.stop()
    return watch.last_first(names) - start


def peer(api: client.ApiClient, cluster: LocalCluster, bins: Path, tmp: Path, pods: int,
         meter: CpuMeter) -> dict[str, float]:
    port = free_port()
    conf = tmp / "scheduler.yaml"
    conf.write_text(yaml.safe_dump({
        "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(cluster.kubeconfig), "qps": 5000, "burst": 5000},
        "leaderElection": {"leaderElect": False},
    }))
    with open(tmp / "kube-scheduler.log", "wb") as out:
        proc = subprocess.Popen([
            str(bins / "kube-scheduler"), f"--config={conf}", "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--authentication-kubeconfig={cluster.kubeconfig}", f"--authorization-kubeconfig={cluster.kubeconfig}",
        ], stdout=out, stderr=subprocess.STDOUT)
    meter.pids["kube-scheduler"] = proc.pid
    try:
        wait_http(f"https://127.0.0.1:{port}/healthz", 60)
        namespace(api, PEER_NS)
        names = [f"p-{i}" for i in range(pods)]
        base = f"/api/v1/namespaces/{PEER_NS}/pods"
        bound = Watch(api, base, lambda p: bool((p.get("spec") or {}).get("nodeName")))
        up = Watch(api, base, running)
        out_ = burst(api, base, [plain_pod(n) for n in names], up, meter, "peer", "peer pods Running")
        out_["peer_all_bound_seconds"] = bound.last_first(names) - out_.pop("start")
        delete_all(api, base)
        up.wait(lambda: not up.now, 300, "peer pods deleted")
        bound.stop()
        up.stop()
        out_.update(peer_jobs(api, pods, meter))
        return out_
    finally:
        proc.terminate()
        proc.wait(15)


def batch_job(name: str) -> dict[str, Any]:
    """One 1-GPU trial as a batch/v1 Job: what a user runs it as without Wanka."""
    spec = {**plain_pod(name)["spec"], "restartPolicy": "Never"}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": spec}}}


def peer_jobs(api: client.ApiClient, count: int, meter: CpuMeter) -> dict[str, float]:
    """Step 2's trials as batch/v1 Jobs: the Job controller creates each one's pod and
    kube-scheduler binds it. A Job runs once its own status counts its pod ready, as a
    TrainingJob runs once its status says so: a job object beside each pod, as with Wanka."""
    base = f"/apis/batch/v1/namespaces/{PEER_NS}/jobs"
    pods_path = f"/api/v1/namespaces/{PEER_NS}/pods"
    up = Watch(api, base, lambda j: ((j.get("status") or {}).get("ready") or 0) >= 1)
    left = Watch(api, pods_path, lambda p: True)
    out = burst(api, base, [batch_job(f"j-{i}") for i in range(count)], up, meter, "peer_jobs",
                "peer Jobs running")
    out.pop("start")
    # The Jobs go first (their controller would replace a deleted pod of a live Job), then the
    # pods, which the Job controller lets go once it drops their tracking finalizer.
    delete_all(api, base)
    delete_all(api, pods_path)
    left.wait(lambda: not left.now, 600, "peer Jobs' pods deleted")
    up.stop()
    left.stop()
    return out


def plain_pod(name: str, scheduler: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """One 1-GPU pod, the same for kube-scheduler and for Wanka (which adds its scheduler name
    and the queue and pool labels)."""
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": 0, "containers": [{
        "name": "c", "image": "trainer:1",
        "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "100m"}}}]}
    if scheduler:
        spec["schedulerName"] = scheduler
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def wanka_pods(api: client.ApiClient, w: Wanka, count: int, meter: CpuMeter) -> dict[str, float]:
    """Step 2's plain pods, bound by Wanka instead: the same API work, scheduler against scheduler.
    The CPU is metered from create to all Running, as step 2's is: their deletion is not in it."""
    up = Watch(api, w.pods_path, running)
    labels = {"wanka.io/queue": NS, "wanka.io/pool": POOL}
    out = burst(api, w.pods_path, [plain_pod(f"w-{i}", "wanka", labels) for i in range(count)], up, meter,
                "wanka_pods", "Wanka's plain pods Running")
    out.pop("start")
    delete_all(api, w.pods_path)
    up.wait(lambda: not up.now, 300, "Wanka's plain pods deleted")
    up.stop()
    return out


def wait_http(url: str, timeout: float) -> None:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def training_job(name: str, replicas: int, gpus: int, resume: str = "Auto") -> dict[str, Any]:
    return {"apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": {
        "pool": POOL, "queue": NS, "replicas": replicas, "resources": {"gpus": gpus},
        "checkpoint": {"resume": resume},
        "restartPolicy": {"maxRestarts": 100, "backoffSeconds": 0, "maxBackoffSeconds": 0},
        "template": {"spec": {"terminationGracePeriodSeconds": 0,
                              "containers": [{"name": "t", "image": "trainer:1"}]}}}}


class Wanka:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.jobs_path = f"{GROUP_PATH}/namespaces/{NS}/trainingjobs"
        self.pods_path = f"/api/v1/namespaces/{NS}/pods"
        self.jobs = Watch(api, self.jobs_path, running)
        self.pods = Watch(api, self.pods_path, lambda p: True)

    def create(self, bodies: list[dict[str, Any]]) -> float:
        start = time.monotonic()
        parallel(lambda b: post(self.api, self.jobs_path, b), bodies)
        return start

    def all_running(self, names: list[str], start: float, timeout: float, what: str) -> float:
        self.jobs.wait(lambda: self.jobs.satisfied(names) == len(names), timeout, what)
        return self.jobs.last_first(names) - start

    def remove(self, names: list[str]) -> float:
        """Delete the jobs; seconds until the last of them and every pod are gone."""
        start = time.monotonic()
        parallel(lambda n: request_json(self.api, "DELETE", f"{self.jobs_path}/{n}"), names)
        gone = set(names)
        self.jobs.wait(lambda: not gone & self.jobs.now.keys(), 300, "jobs deleted")
        jobs_gone = time.monotonic() - start
        self.pods.wait(lambda: not self.pods.now, 300, "pods deleted")
        took = time.monotonic() - start
        log(f"{len(names)} job(s) deleted: jobs gone after {jobs_gone:.1f}s, pods after {took:.1f}s")
        return took

    def gang(self, name: str, replicas: int) -> tuple[float, float]:
        """Create -> Running, and delete -> every pod gone, of one replicas x 8 gang."""
        start = self.create([training_job(name, replicas, 8)])
        took = self.all_running([name], start, 300, f"gang {name}")
        st = request_json(self.api, "GET", f"{self.jobs_path}/{name}").get("status") or {}
        if st.get("restarts"):  # a slow figure's cause, in the log
            why = "; ".join(f"{c.get('type')}={c.get('reason')}: {c.get('message')}"
                            for c in st.get("conditions") or [])
            log(f"gang {name} restarted {st['restarts']} time(s) before it ran: {why}")
        return took, self.remove([name])


def proc_cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class CpuMeter:
    """CPU seconds each control-plane process (and the operator, once started) spends in a step:
    where a step's time goes on a machine all of them share."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.pids = {**cluster.pids(), "bench": os.getpid()}

    def read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = proc_cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                continue
        return out

    def since(self, before: dict[str, float], prefix: str) -> dict[str, float]:
        now = self.read()
        return {f"{prefix}_{name.replace('-', '_')}_cpu_seconds": now[name] - before[name]
                for name in now if name in before}


def member_failure(api: client.ApiClient, w: Wanka, tries: int) -> list[float]:
    name = "victim"
    took = w.all_running([name], w.create([training_job(name, 4, 8)]), 300, "victim gang")
    log(f"the 4 x 8 gang to fail is Running after {took:.2f}s")
    times = []
    path = f"{w.jobs_path}/{name}"
    for i in range(tries):
        pods = request_json(api, "GET", w.pods_path, query=[("labelSelector", f"wanka.io/job={name}")])["items"]
        live = sorted(p["metadata"]["name"] for p in pods
                      if running(p) and not p["metadata"].get("deletionTimestamp"))
        start = time.monotonic()
        request_json(api, "PATCH", f"{w.pods_path}/{live[i % len(live)]}",
                     {"metadata": {"labels": {"wanka.io/sim": "fail"}}},
                     content_type=MERGE_PATCH)

        def back(i: int = i) -> bool:
            st = request_json(api, "GET", path).get("status") or {}
            return st.get("restarts") == i + 1 and st.get("phase") == "Running"

        deadline = time.monotonic() + 120
        while not back():
            if time.monotonic() > deadline:
                raise TimeoutError("the failed gang did not run again within 120s")
            time.sleep(0.02)
        times.append(time.monotonic() - start)
    return times


def one_run(args: argparse.Namespace, bins: Path, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="wanka-scale-") as tmp_:
        tmp = Path(tmp_)
        cluster = LocalCluster(tmp / "cluster")
        kubeconfig = cluster.up()
        operator = None
        try:
            api = api_client(kubeconfig)
            install_crds(api)
            if not args.no_finalizer_policy:
                # As `helm install` does on an API server serving MutatingAdmissionPolicy.
                apply_manifests(api, render_chart("wanka", "default", "--api-versions", MAP_API,
                                                  "--show-only", "templates/jobfinalizer.yaml"), "default")
            log(f"run {index}: creating {args.nodes} nodes")
            out["nodes_schedulable_seconds"] = make_nodes(api, args.nodes)
            log(f"run {index}: nodes schedulable after {out['nodes_schedulable_seconds']:.1f}s")
            # A node that stops being schedulable later (its simulated kubelet fell behind on a
            # busy machine) makes any figure after it slow: counted, so a run says so.
            fleet = Watch(api, "/api/v1/nodes", schedulable)
            meter = CpuMeter(cluster)
            if not args.skip_peer:
                out.update(peer(api, cluster, bins, tmp, args.jobs, meter))
                log(f"run {index}: kube-scheduler: {args.jobs} pods Running after "
                    f"{out['peer_all_running_seconds']:.1f}s; {args.jobs} batch Jobs running after "
                    f"{out['peer_jobs_all_running_seconds']:.1f}s")
            operator = start_operator(kubeconfig, tmp / "operator.log", timeout=120)
            pid = operator.proc.pid
            meter.pids["operator"] = pid
            pool_start = time.monotonic()
            request_json(api, "POST", f"{GROUP_PATH}/gpupools", {
                "apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool", "metadata": {"name": POOL},
                "spec": {"nodeSelector": {"matchLabels": {"wanka.io/pool": POOL}},
                         "topology": {"levels": ["wanka.io/rack"]}}})
            request_json(api, "POST", f"{GROUP_PATH}/tenantqueues", {
                "apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue", "metadata": {"name": NS},
                "spec": {"namespaces": [NS], "quotas": [{"pool": POOL, "gpus": args.nodes * 8}]}})
            namespace(api, NS)
            # A platform declares its pool before jobs come: wait until the operator has taken
            # in the whole fleet (every node's health record written, the pool's status whole).
            pools = Watch(api, f"{GROUP_PATH}/gpupools", lambda p: ((p.get("status") or {}).get("nodes") or {})
                          .get("healthy") == args.nodes)
            pools.wait(lambda: pools.satisfied([POOL]) == 1, 600, "pool status")
            out["pool_ready_seconds"] = pools.first[POOL] - pool_start
            pools.stop()
            log(f"run {index}: pool of {args.nodes} nodes ready after {out['pool_ready_seconds']:.1f}s")
            w = Wanka(api)
            for replicas, key in ((128, "gang_1024_seconds"), (512, "gang_4096_seconds")):
                if replicas <= args.nodes:
                    out[key], out[key.replace("_seconds", "_deleted_seconds")] = w.gang(f"g{replicas}", replicas)
                    log(f"run {index}: {replicas} x 8 gang Running after {out[key]:.2f}s")
            gangs = min(100, args.nodes // 10)
            names = [f"m-{i}" for i in range(gangs)]
            start = w.create([training_job(n, 8, 8) for n in names])
            out[f"gangs_{gangs}x64_seconds"] = w.all_running(names, start, 600, "concurrent gangs")
            log(f"run {index}: {gangs} 8 x 8 gangs Running after {out[f'gangs_{gangs}x64_seconds']:.1f}s")
            out[f"gangs_{gangs}x64_deleted_seconds"] = w.remove(names)
            out.update(wanka_pods(api, w, args.jobs, meter))
            log(f"run {index}: Wanka: {args.jobs} plain pods Running after "
                f"{out['wanka_pods_all_running_seconds']:.1f}s")
            if "peer_all_running_seconds" in out:
                out["ratio_peer_over_wanka_pods"] = (out["peer_all_running_seconds"]
                                                     / out["wanka_pods_all_running_seconds"])
            names = [f"s-{i}" for i in range(args.jobs)]
            before = meter.read()
            start = w.create([training_job(n, 1, 1, args.small_resume) for n in names])
            out["wanka_created_seconds"] = time.monotonic() - start
            out["wanka_all_running_seconds"] = w.all_running(names, start, 1800, "small jobs")
            out.update(meter.since(before, "wanka_jobs"))
            log(f"run {index}: Wanka: {args.jobs} jobs Running after {out['wanka_all_running_seconds']:.1f}s")
            if "peer_all_running_seconds" in out:
                out["ratio_peer_over_wanka"] = out["peer_all_running_seconds"] / out["wanka_all_running_seconds"]
                out["ratio_peer_jobs_over_wanka"] = (out["peer_jobs_all_running_seconds"]
                                                     / out["wanka_all_running_seconds"])
            tries = member_failure(api, w, 3)
            out["member_failure_seconds"], out["member_failure_max_seconds"] = statistics.median(tries), max(tries)
            log(f"run {index}: member failure -> gang Running in {out['member_failure_seconds']:.2f}s")
            time.sleep(10)  # let the last writes' watch events settle
            cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
            time.sleep(args.idle_seconds)
            out["operator_idle_cpu_percent"] = 100 * (proc_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            out["operator_rss_mib"] = proc_mib(pid, "VmRSS")
            out["operator_peak_rss_mib"] = proc_mib(pid, "VmHWM")
            log(f"run {index}: idle CPU {out['operator_idle_cpu_percent']:.1f}%, "
                f"peak RSS {out['operator_peak_rss_mib']:.0f} MiB")
            w.jobs.stop()
            w.pods.stop()
            fleet.stop()
            out["nodes_lost"] = len(fleet.lost)
            if fleet.lost:
                log(f"run {index}: {len(fleet.lost)} node(s) stopped being schedulable during the run: "
                    f"{', '.join(sorted(fleet.lost)[:10])}")
        finally:
            if operator is not None:
                operator.stop()
                if args.keep_logs:
                    kept = Path(args.keep_logs) / f"operator-{index}.log"
                    kept.write_bytes((tmp / "operator.log").read_bytes())
            cluster.down()
    return {k: round(v, 3) for k, v in out.items()}


TARGETS = {
    "ratio_peer_over_wanka": ">= 1.0 (aim 1.5)",
    "ratio_peer_over_wanka_pods": ">= 1.0 (aim 1.5)",
    "gang_4096_seconds": "<= 5",
    "gang_1024_seconds": "<= 3",
    "member_failure_seconds": "<= 2",
    "operator_peak_rss_mib": "<= 300",
    "operator_idle_cpu_percent": "<= 5",
    "nodes_schedulable_seconds": "<= 30",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="fresh control planes, one after another (default 3)")
    parser.add_argument("--nodes", type=int, default=1250, help="8-GPU kwok nodes (default 1250: 10,000 GPUs)")
    parser.add_argument("--jobs", type=int, default=2000,
                        help="one-GPU jobs (and kube-scheduler's plain pods) created at once (default 2000)")
    parser.add_argument("--idle-seconds", type=float, default=30, help="how long idle CPU is sampled (default 30)")
    parser.add_argument("--skip-peer", action="store_true", help="no kube-scheduler step (no ratio)")
    parser.add_argument("--small-resume", choices=["Never", "Auto"], default="Never",
                        help="checkpoint.resume of the one-GPU jobs (default Never: a sweep's trials, which "
                        "need no progress report; Auto adds its ServiceAccount, Role, binding and report)")
    parser.add_argument("--no-finalizer-policy", action="store_true",
                        help="leave out the chart's job-finalizer policy (the operator then adds each "
                        "job's finalizer with a write of its own)")
    parser.add_argument("--keep-logs", default="", help="a directory to copy each run's operator log into")
    args = parser.parse_args()
    bins = Path(subprocess.run(["bash", str(BUILD_SCRIPT), *([] if args.skip_peer else ["--scheduler"])],
                               check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args, bins, i + 1))
        log(f"run {i + 1}: {json.dumps(runs[-1])}")
    figures = {}
    for key in runs[0]:
        values = [r[key] for r in runs if key in r]
        figures[key] = {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values),
                        "runs": values}
    print(json.dumps({
        "benchmark": "1,250-node scale, Wanka beside kube-scheduler of the same release",
        "nodes": args.nodes, "gpus": args.nodes * 8, "jobs": args.jobs, "runs": args.runs,
        "small_jobs_resume": args.small_resume, "finalizer_policy": not args.no_finalizer_policy,
        "figures": figures, "targets": {k: v for k, v in TARGETS.items() if k in figures},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
