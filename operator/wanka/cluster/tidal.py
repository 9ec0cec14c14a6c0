"""A reproducible tidal day on a real control plane: `make demo-tidal` (`hack/demo.py --tidal`)
and its integration test.

Training gangs fill a pool at night; in the morning an inference Deployment (a higher
PriorityClass, plain pods with `schedulerName: wanka`) scales from `low` to `high` one-GPU pods
and reclaims GPUs from training by the scheduling cycle's checkpoint-aware preemption; at night
it scales back and the preempted gangs resume from their checkpoints. Every gang reports a
checkpoint (as the SDK would) before the morning, so the work each reclaim loses is measured.

Developer tooling: it drives the cluster as a user would and reads back what happened.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "wanka.io", "v1alpha1"
PRIORITY_CLASS = "wanka-inference"
INFERENCE = "inference"


@dataclass
class TidalReport:
    """What one tidal cycle did."""

    pool_gpus: int
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> GPUs by kind
    inference_start_p50_seconds: float = 0.0
    inference_start_p99_seconds: float = 0.0
    preempted_gangs: int = 0
    restarts: int = 0
    lost_seconds_per_reclaim: list[float] = field(default_factory=list)
    resumed_from_checkpoint: bool = False

    def wire(self) -> dict[str, Any]:
        return asdict(self)


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Tidal:
    """One pool, one queue, `gangs` training gangs of `replicas` x `gpus`, one inference Deployment."""

    def __init__(self, api: client.ApiClient, namespace: str, pool: str, queue: str,
                 gangs: int = 3, replicas: int = 2, gpus: int = 4, low: int = 2, high: int = 12,
                 pool_gpus: int = 16, timeout: float = 60) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.scheduling = client.SchedulingV1Api(api)
        self.ns, self.pool, self.queue = namespace, pool, queue
        self.gangs, self.replicas, self.gpus, self.low, self.high = gangs, replicas, gpus, low, high
        self.pool_gpus, self.timeout = pool_gpus, timeout
        self.names = [f"train-{i}" for i in range(gangs)]

    # --- objects ---------------------------------------------------------------------------
    def setup(self) -> None:
        try:
            self.scheduling.create_priority_class({
                "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": PRIORITY_CLASS}, "value": 1000,
                "description": "Inference: reclaims GPUs from lower-priority training."})
        except ApiException as exc:
            if exc.status != 409:
                raise
        for name in self.names:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, "trainingjobs", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name},
                "spec": {"pool": self.pool, "queue": self.queue, "replicas": self.replicas, "priority": 0,
                         "resources": {"gpus": self.gpus},
                         "restartPolicy": {"maxRestarts": 0, "backoffSeconds": 0, "maxBackoffSeconds": 0},
                         "template": {"spec": {"terminationGracePeriodSeconds": 2, "containers": [
                             {"name": "train", "image": "trainer:1"}]}}}})
        labels = {"app": INFERENCE, "wanka.io/queue": self.queue, "wanka.io/pool": self.pool}
        self.apps.create_namespaced_deployment(self.ns, {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": INFERENCE},
            "spec": {"replicas": self.low, "selector": {"matchLabels": {"app": INFERENCE}},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "schedulerName": "wanka", "priorityClassName": PRIORITY_CLASS,
                         "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "serve", "image": "server:1",
                                         "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}})

    # --- reading -----------------------------------------------------------------------------
    def job(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "trainingjobs", name))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.job(name).get("status") or {})

    def inference_pods(self) -> list[Any]:
        return [p for p in self.core.list_namespaced_pod(self.ns, label_selector=f"app={INFERENCE}").items
                if p.metadata.deletion_timestamp is None]

    def running_inference(self) -> int:
        return sum(1 for p in self.inference_pods() if p.spec.node_name and p.status.phase == "Running")

    def allocation(self) -> dict[str, float]:
        """GPUs held now, by kind, and as a share of the pool."""
        training = sum(len(self.status(n).get("placement") or []) * self.gpus
                       for n in self.names if self.status(n).get("phase") == "Running")
        inference = self.running_inference()
        return {"training": training, "inference": inference,
                "allocated_percent": round(100 * (training + inference) / self.pool_gpus, 1)}

    def checkpoint(self) -> None:
        """Each running gang reports a checkpoint now, as the SDK's Reporter does."""
        for i, name in enumerate(self.names):
            body = {"spec": {"step": 100 + i, "path": f"/ckpt/{name}/100", "time": _now(), "saveSeconds": 5}}
            try:
                self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, "trainingjobprogresses",
                                                           name, body)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    # --- the day -------------------------------------------------------------------------------
    def scale(self, replicas: int) -> list[float]:
        """Scale inference; seconds from the scale to Running for each new pod."""
        before = {p.metadata.name for p in self.inference_pods()}
        started = time.monotonic()
        self.apps.patch_namespaced_deployment_scale(INFERENCE, self.ns, {"spec": {"replicas": replicas}})
        seen: dict[str, float] = {}

        def done() -> bool:
            for p in self.inference_pods():
                if p.metadata.name not in before and p.metadata.name not in seen and p.status.phase == "Running":
                    seen[p.metadata.name] = time.monotonic() - started
            return self.running_inference() == replicas and len(self.inference_pods()) == replicas

        _wait(f"{replicas} inference pods Running", done, self.timeout)
        return sorted(seen.values())

    def run(self) -> TidalReport:
        report = TidalReport(pool_gpus=self.pool_gpus)
        self.setup()
        _wait("training gangs and inference Running",
              lambda: all(self.status(n).get("phase") == "Running" for n in self.names)
              and self.running_inference() == self.low, self.timeout)
        report.phases["night"] = self.allocation()
        self.checkpoint()
        _wait("checkpoints mirrored into status",
              lambda: all(self.status(n).get("lastCheckpoint") for n in self.names), self.timeout)
        time.sleep(1.0)  # some work after the checkpoint, which the reclaim then loses
        starts = self.scale(self.high)
        report.phases["morning"] = self.allocation()
        preempted = [n for n in self.names if self.status(n).get("preemptions")]
        report.preempted_gangs = len(preempted)
        report.lost_seconds_per_reclaim = [float(self.status(n).get("lostSeconds") or 0) for n in preempted]
        starts += self.scale(self.low)
        _wait("preempted gangs Running again",
              lambda: all(self.status(n).get("phase") == "Running" for n in self.names), self.timeout)
        report.phases["evening"] = self.allocation()
        report.restarts = sum(int(self.status(n).get("restarts") or 0) for n in self.names)
        report.resumed_from_checkpoint = bool(preempted) and all(
            self._resumed(n) for n in preempted)
        if starts:
            report.inference_start_p50_seconds = round(statistics.median(starts), 2)
            report.inference_start_p99_seconds = round(starts[min(len(starts) - 1, int(0.99 * len(starts)))], 2)
        return report

    def _resumed(self, name: str) -> bool:
        pods = [p for p in self.core.list_namespaced_pod(self.ns, label_selector=f"wanka.io/job={name}").items
                if p.metadata.deletion_timestamp is None]
        env = [{e.name: e.value for e in p.spec.containers[0].env or []} for p in pods]
        return bool(env) and all(e.get("WANKA_RESUME") == "1" for e in env)
