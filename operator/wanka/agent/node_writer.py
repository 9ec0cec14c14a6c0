"""Write the agent's report onto its own Node through the official Kubernetes client.

RBAC: `get` and `patch` on `nodes` (the annotation) and `patch` on `nodes/status` (the
condition); nothing else.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client, config  # type: ignore[import-untyped,unused-ignore]

from wanka.agent.agent import Report
from wanka.core.health import GPU_CONDITION, GPU_HEALTH_ANNOTATION, format_time


class KubeNodeWriter:
    """A `NodeWriter` that patches the Node; writes only what changed, except the heartbeat."""

    def __init__(self, api: Any, node_name: str) -> None:
        self._api = api  # a kubernetes.client.CoreV1Api (or a fake with the same methods)
        self._node = node_name
        self._status: str | None = None  # the GPUHealthy status now on the Node
        self._annotation: str | None = None
        self._loaded = False

    @classmethod
    def connect(cls, node_name: str, kubeconfig: str | None = None) -> KubeNodeWriter:
        """In-cluster credentials, else the kubeconfig (explicit path, or the default one)."""
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        return cls(client.CoreV1Api(), node_name)

    def write(self, report: Report, now: float) -> None:
        try:
            if not self._loaded:
                self._load()
            annotation = report.annotation
            # Annotation first: a fresh heartbeat then always vouches for current device data.
            if annotation != self._annotation:
                self._api.patch_node(
                    self._node,
                    {"metadata": {"annotations": {GPU_HEALTH_ANNOTATION: annotation}}},
                )
                self._annotation = annotation
            stamp = format_time(now)
            condition = {
                "type": GPU_CONDITION,
                "status": report.status,
                "reason": report.reason,
                "message": report.message,
                "lastHeartbeatTime": stamp,
            }
            if report.status != self._status:
                # Left out otherwise, so the merge keeps the time the status last changed.
                condition["lastTransitionTime"] = stamp
            # A dict body goes out as a strategic merge patch, and Node conditions merge by
            # `type`: the kubelet's and other agents' conditions are left alone.
            self._api.patch_node_status(self._node, {"status": {"conditions": [condition]}})
            self._status = report.status
        except Exception:
            self._loaded = False  # someone else may have changed the Node; re-read next time
            raise

    def _load(self) -> None:
        node = self._api.read_node(self._node)
        annotations = (node.metadata.annotations or {}) if node.metadata else {}
        self._annotation = annotations.get(GPU_HEALTH_ANNOTATION)
        self._status = None
        for c in (node.status.conditions or []) if node.status else []:
            if c.type == GPU_CONDITION:
                self._status = c.status
        self._loaded = True
