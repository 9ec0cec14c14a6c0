"""Fluent builders of the Kubernetes objects tests use (TrainingJob, Pod, Node, GPUPool) as plain dicts.

`make_training_job("llama").replicas(2).gpus(8).admitted(("n1", [0, 1])).obj()` reads like the
table row it is; unit tests feed the result to the cluster layer's parsers, integration tests
send it to the API server.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from wanka.cluster.jobio import FINALIZER


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: str, reason: str, at: float, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": rfc3339(at)}


class TrainingJobObj:
    """A TrainingJob object; `.obj()` returns a fresh dict each time."""

    def __init__(self, name: str, namespace: str = "ns") -> None:
        self.body: dict[str, Any] = {
            "apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1,
                         "resourceVersion": "1", "creationTimestamp": rfc3339(1000),
                         "finalizers": [FINALIZER]},
            "spec": {"pool": "p", "queue": "q", "replicas": 1, "resources": {"gpus": 8},
                     "template": {"metadata": {"labels": {}},
                                  "spec": {"terminationGracePeriodSeconds": 5,
                                           "containers": [{"name": "train", "image": "trainer:1"}]}}},
            "status": {},
        }

    @property
    def _spec(self) -> dict[str, Any]:
        return self.body["spec"]  # type: ignore[no-any-return]

    @property
    def _status(self) -> dict[str, Any]:
        return self.body["status"]  # type: ignore[no-any-return]

    # --- spec --------------------------------------------------------------------------------
    def pool(self, name: str) -> TrainingJobObj:
        self._spec["pool"] = name
        return self

    def queue(self, name: str) -> TrainingJobObj:
        self._spec["queue"] = name
        return self

    def replicas(self, n: int) -> TrainingJobObj:
        self._spec["replicas"] = n
        return self

    def gpus(self, n: int) -> TrainingJobObj:
        self._spec["resources"] = {"gpus": n}
        return self

    def priority(self, p: int) -> TrainingJobObj:
        self._spec["priority"] = p
        return self

    def grace(self, seconds: int) -> TrainingJobObj:
        self._spec["template"]["spec"]["terminationGracePeriodSeconds"] = seconds
        return self

    def labels(self, **labels: str) -> TrainingJobObj:
        self._spec["template"]["metadata"]["labels"].update(labels)
        return self

    def restart_policy(self, **policy: Any) -> TrainingJobObj:
        self._spec["restartPolicy"] = policy
        return self

    def gang(self, **gang: Any) -> TrainingJobObj:
        self._spec["gang"] = gang
        return self

    def checkpoint(self, path: str) -> TrainingJobObj:
        self._spec["checkpoint"] = {"path": path}
        return self

    def suspend(self) -> TrainingJobObj:
        self._spec["suspend"] = True
        return self

    def pod_spec(self, **fields: Any) -> TrainingJobObj:
        """More fields of the template's pod spec: nodeSelector, affinity, tolerations, ..."""
        self._spec["template"]["spec"].update(fields)
        return self

    def spec_field(self, key: str, value: Any) -> TrainingJobObj:
        self._spec[key] = value
        return self

    # --- metadata ----------------------------------------------------------------------------
    def no_finalizer(self) -> TrainingJobObj:
        self.body["metadata"]["finalizers"] = []
        return self

    def deleting(self, at: float = 2000) -> TrainingJobObj:
        self.body["metadata"]["deletionTimestamp"] = rfc3339(at)
        return self

    # --- status ------------------------------------------------------------------------------
    def phase(self, phase: str) -> TrainingJobObj:
        self._status["phase"] = phase
        return self

    def queued(self, retry_after: float | None = None) -> TrainingJobObj:
        self.phase("Queued")
        if retry_after is not None:
            self._status["retryAfter"] = rfc3339(retry_after)
        return self

    def admitted(self, *placement: tuple[str, list[int]], at: float = 1000) -> TrainingJobObj:
        self.phase("Admitted")
        self._status["placement"] = [{"replica": i, "node": node, "devices": devs}
                                     for i, (node, devs) in enumerate(placement)]
        self._status["admittedTime"] = rfc3339(at)
        return self

    def running(self, *placement: tuple[str, list[int]], since: float = 1000) -> TrainingJobObj:
        self.admitted(*placement, at=since)
        self.phase("Running")
        self._status["startTime"] = rfc3339(since)
        self.status_condition(condition("PodsReady", "True", "AllReplicasRunning", since))
        return self

    def restarts(self, n: int, preemptions: int = 0) -> TrainingJobObj:
        self._status["restarts"] = n
        self._status["preemptions"] = preemptions
        return self

    def last_checkpoint(self, step: int, at: float, path: str = "/ckpt/step") -> TrainingJobObj:
        self._status["lastCheckpoint"] = {"step": step, "path": path, "time": rfc3339(at)}
        return self

    def status_condition(self, cond: dict[str, Any]) -> TrainingJobObj:
        conds = [c for c in self._status.setdefault("conditions", []) if c["type"] != cond["type"]]
        self._status["conditions"] = [*conds, cond]
        return self

    def status_field(self, key: str, value: Any) -> TrainingJobObj:
        self._status[key] = value
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self.body)


def make_training_job(name: str, namespace: str = "ns") -> TrainingJobObj:
    return TrainingJobObj(name, namespace)


class PodObj:
    """A member pod of a TrainingJob, as the operator creates it."""

    def __init__(self, job: str, replica: int, attempt: int = 0, namespace: str = "ns") -> None:
        self.body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job}-{replica}-a{attempt}", "namespace": namespace,
                         "uid": f"uid-{job}-{replica}-{attempt}", "resourceVersion": "10",
                         "labels": {"wanka.io/job": job, "wanka.io/replica": str(replica),
                                    "wanka.io/attempt": str(attempt)}},
            "spec": {"containers": [{"name": "train", "image": "trainer:1"}]},
            "status": {"phase": "Pending"},
        }

    def on(self, node: str) -> PodObj:
        self.body["spec"]["nodeName"] = node
        return self

    def running(self, ready: bool = True) -> PodObj:
        self.body["status"] = {"phase": "Running",
                               "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
        return self

    def succeeded(self) -> PodObj:
        self.body["status"] = {"phase": "Succeeded"}
        return self

    def failed(self, code: int = 1, reason: str = "Error") -> PodObj:
        self.body["status"] = {"phase": "Failed", "reason": reason, "containerStatuses": [
            {"name": "train", "state": {"terminated": {"exitCode": code}}}]}
        return self

    def preflight(self, code: int, message: str = "") -> PodObj:
        """Its gang preflight (init container) ended with `code`, leaving `message`."""
        phase = "Failed" if code else "Pending"
        self.body["status"] = {"phase": phase, "initContainerStatuses": [
            {"name": "wanka-preflight", "state": {"terminated": {"exitCode": code, "message": message}}}]}
        return self

    def deleting(self, deadline: float) -> PodObj:
        """Terminating; `deadline` is its deletionTimestamp (the end of its grace period)."""
        self.body["metadata"]["deletionTimestamp"] = rfc3339(deadline)
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self.body)


def make_pod(job: str, replica: int, attempt: int = 0, namespace: str = "ns") -> PodObj:
    return PodObj(job, replica, attempt, namespace)


class NodeObj:
    """A Node with GPUs, Ready unless told otherwise."""

    def __init__(self, name: str) -> None:
        self.body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {}, "annotations": {}, "resourceVersion": "5"},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "capacity": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8"},
                       "allocatable": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8"}},
        }

    def gpus(self, n: int, resource: str = "nvidia.com/gpu") -> NodeObj:
        self.body["status"]["capacity"][resource] = str(n)
        self.body["status"]["allocatable"][resource] = str(n)
        return self

    def allocatable(self, n: int, resource: str = "nvidia.com/gpu") -> NodeObj:
        """What the kubelet offers of `resource`; capacity stays as it is."""
        self.body["status"]["allocatable"][resource] = str(n)
        return self

    def not_allocatable(self, resource: str = "nvidia.com/gpu") -> NodeObj:
        del self.body["status"]["allocatable"][resource]
        return self

    def not_ready(self) -> NodeObj:
        self.body["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]
        return self

    def taint(self, key: str, effect: str = "NoSchedule", value: str = "") -> NodeObj:
        self.body["spec"].setdefault("taints", []).append({"key": key, "value": value, "effect": effect})
        return self

    def unhealthy(self) -> NodeObj:
        return self.taint("wanka.io/unhealthy", "NoSchedule", "XID79")

    def label(self, **labels: str) -> NodeObj:
        self.body["metadata"]["labels"].update(labels)
        return self

    def cordoned(self) -> NodeObj:
        self.body["spec"]["unschedulable"] = True
        return self

    def annotate(self, key: str, value: str) -> NodeObj:
        self.body["metadata"]["annotations"][key] = value
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self.body)


def make_node(name: str) -> NodeObj:
    return NodeObj(name)


class GPUPoolObj:
    """A GPUPool selecting nodes by labels."""

    def __init__(self, name: str) -> None:
        self.body: dict[str, Any] = {
            "apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool",
            "metadata": {"name": name, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1"},
            "spec": {"nodeSelector": {"matchLabels": {}}},
        }

    def select(self, **labels: str) -> GPUPoolObj:
        self.body["spec"]["nodeSelector"]["matchLabels"].update(labels)
        return self

    def spec_field(self, key: str, value: Any) -> GPUPoolObj:
        self.body["spec"][key] = value
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self.body)


def make_gpupool(name: str) -> GPUPoolObj:
    return GPUPoolObj(name)
