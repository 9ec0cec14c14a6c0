"""Writes to the API server: status patches of Wanka objects and Events people read."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from wanka.api.common import GROUP, VERSION
from wanka.cluster.fence import Fence, check

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]
COMPONENT = "wanka-operator"
# Cluster-scoped objects' Events need a namespace to live in.
CLUSTER_EVENT_NAMESPACE = os.environ.get("WANKA_EVENT_NAMESPACE", "default")


def _ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusWriter:
    """Merge-patches the status subresource of Wanka's custom objects."""

    def __init__(self, api: client.ApiClient, fence: Fence | None = None) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.fence = fence

    def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Returns False when the object is gone (nothing to report on)."""
        check(self.fence, f"patch status of {plural} {namespace}/{name}")
        body = {"status": dict(status)}
        try:
            if namespace:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, body
                )
            else:
                self.custom.patch_cluster_custom_object_status(GROUP, VERSION, plural, name, body)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


class EventRecorder:
    """Posts core/v1 Events, aggregating repeats of the same reason and message into a count."""

    def __init__(self, api: client.ApiClient, dedupe_seconds: float = 600, fence: Fence | None = None) -> None:
        self.core = client.CoreV1Api(api)
        self.fence = fence
        self.instance = socket.gethostname()
        self.dedupe_seconds = dedupe_seconds
        self._seen: dict[tuple[str, str, str], tuple[str, str, int, float]] = {}

    def record(
        self,
        obj: Mapping[str, Any],
        type_: EventType,
        reason: str,
        message: str,
    ) -> None:
        meta = obj.get("metadata") or {}
        check(self.fence, f"record {reason} on {meta.get('name')}")
        namespace = meta.get("namespace") or CLUSTER_EVENT_NAMESPACE
        uid = str(meta.get("uid", ""))
        key = (uid, reason, message)
        now = time.monotonic()
        seen = self._seen.get(key)
        try:
            if seen and now - seen[3] < self.dedupe_seconds:
                name, ns, count, _ = seen
                self.core.patch_namespaced_event(
                    name, ns, {"count": count + 1, "lastTimestamp": _ts()}
                )
                self._seen[key] = (name, ns, count + 1, now)
                return
            body = {
                "metadata": {"generateName": f"{meta.get('name', 'wanka')}.", "namespace": namespace},
                "involvedObject": {
                    "apiVersion": obj.get("apiVersion"),
                    "kind": obj.get("kind"),
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace"),
                    "uid": uid,
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "reason": reason,
                "message": message[:1024],
                "type": type_,
                "source": {"component": COMPONENT},
                "reportingComponent": f"{GROUP}/operator",
                "reportingInstance": self.instance,
                "firstTimestamp": _ts(),
                "lastTimestamp": _ts(),
                "count": 1,
            }
            created = self.core.create_namespaced_event(namespace, body)
            self._seen[key] = (created.metadata.name, namespace, 1, now)
        except ApiException as exc:
            # Events are best effort: never let one break a reconcile.
            log.warning("could not post event %s on %s: %s %s", reason, meta.get("name"),
                        exc.status, (exc.body or "")[:300])
            self._seen.pop(key, None)
