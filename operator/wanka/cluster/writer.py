"""Writes to the API server: status patches of Wanka objects and Events people read."""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from wanka.api.common import GROUP, VERSION
from wanka.cluster.fence import Fence, check
from wanka.cluster.kube import MERGE_PATCH, request_json
from wanka.metrics import EVENTS_DROPPED

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
        self.api = api
        self.fence = fence

    def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Returns False when the object is gone (nothing to report on)."""
        check(self.fence, f"patch status of {plural} {namespace}/{name}")
        body = {"status": dict(status)}
        where = f"namespaces/{namespace}/" if namespace else ""
        try:
            request_json(self.api, "PATCH", f"/apis/{GROUP}/{VERSION}/{where}{plural}/{name}/status", body,
                         content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


class Recorder(Protocol):
    """What the loops record Events through: an EventRecorder, or a test's list."""

    def record(self, obj: Mapping[str, Any], type_: Any, reason: str, message: str) -> None: ...


class EventRecorder:
    """Posts core/v1 Events, aggregating repeats of the same reason and message into a count.

    Events are for people and best effort (client-go's recorder drops them too when it falls
    behind): `record` only queues one, and a few sender threads post them, so a burst of
    thousands of transitions never waits on its Events. The queue and the repeat memory are
    bounded; what does not fit is dropped and counted (`wanka_events_dropped_total`).
    """

    QUEUE = 5000
    MEMORY = 4096
    SENDERS = 2

    def __init__(self, api: client.ApiClient, dedupe_seconds: float = 600, fence: Fence | None = None,
                 background: bool = True) -> None:
        self.core = client.CoreV1Api(api)
        self.fence = fence
        self.instance = socket.gethostname()
        self.dedupe_seconds = dedupe_seconds
        self._seen: OrderedDict[tuple[str, str, str], tuple[str, str, int, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[dict[str, Any], EventType, str, str]] | None = None
        if background:
            self._queue = queue.Queue(self.QUEUE)
            for i in range(self.SENDERS):
                threading.Thread(target=self._send_forever, name=f"events-{i}", daemon=True).start()

    def record(
        self,
        obj: Mapping[str, Any],
        type_: EventType,
        reason: str,
        message: str,
    ) -> None:
        meta = obj.get("metadata") or {}
        check(self.fence, f"record {reason} on {meta.get('name')}")
        # Only what the Event needs: never a whole (large) object held in the queue.
        about = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                 "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")}}
        if self._queue is None:
            self._send(about, type_, reason, message)
            return
        try:
            self._queue.put_nowait((about, type_, reason, message))
        except queue.Full:
            EVENTS_DROPPED.inc()

    def flush(self, timeout: float = 10) -> None:
        """Wait until every queued Event is sent (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue is not None and self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _send_forever(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if self.fence is None or self.fence():
                    self._send(*item)
            except Exception:  # never let a sender thread die
                log.debug("event not sent", exc_info=True)
            finally:
                self._queue.task_done()

    def _send(self, obj: Mapping[str, Any], type_: EventType, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or CLUSTER_EVENT_NAMESPACE
        uid = str(meta.get("uid", ""))
        key = (uid, reason, message)
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
        try:
            if seen and now - seen[3] < self.dedupe_seconds:
                name, ns, count, _ = seen
                request_json(self.core.api_client, "PATCH", f"/api/v1/namespaces/{ns}/events/{name}",
                             {"count": count + 1, "lastTimestamp": _ts()},
                             content_type=MERGE_PATCH)
                self._remember(key, (name, ns, count + 1, now))
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
            created = request_json(self.core.api_client, "POST", f"/api/v1/namespaces/{namespace}/events", body)
            self._remember(key, (created["metadata"]["name"], namespace, 1, now))
        except ApiException as exc:
            # Events are best effort: never let one break a reconcile.
            log.warning("could not post event %s on %s: %s %s", reason, meta.get("name"),
                        exc.status, (exc.body or "")[:300])
            with self._lock:
                self._seen.pop(key, None)

    def _remember(self, key: tuple[str, str, str], value: tuple[str, str, int, float]) -> None:
        with self._lock:
            self._seen[key] = value
            self._seen.move_to_end(key)
            while len(self._seen) > self.MEMORY:
                self._seen.popitem(last=False)
