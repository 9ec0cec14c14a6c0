"""Leader election on a coordination.k8s.io Lease: of several replicas only the holder acts.

Every replica keeps watching (warm caches, fast failover); only the leader runs the
reconcile loop. A leader that cannot renew within the lease duration steps down before
anyone else may take over, and every write it makes is guarded by resourceVersion
preconditions, so a deposed leader's late write fails instead of clobbering.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: object) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


class LeaseElector:
    """`tick()` tries to acquire or renew; `is_leader` says whether to act right now."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str = "wanka-operator",
        identity: str | None = None,
        duration_seconds: int = 15,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.coord = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{socket.gethostname()}-{int(time.time() * 1000) % 100000}"
        self.duration = duration_seconds
        self.clock = clock
        self._renewed_at: float | None = None

    @property
    def is_leader(self) -> bool:
        # Step down on our own clock before the lease can expire for the others.
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.duration * 0.8

    def tick(self) -> bool:
        started = self.clock()
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("reading lease %s/%s: %s", self.namespace, self.name, exc.reason)
                return self.is_leader
            return self._create(started)
        spec = lease.spec
        holder = spec.holder_identity
        renewed = _parse(spec.renew_time) or _parse(spec.acquire_time) or 0.0
        expired = started - renewed > (spec.lease_duration_seconds or self.duration)
        if holder != self.identity and not expired:
            if self._renewed_at is not None:
                log.warning("lost leadership to %s", holder)
            self._renewed_at = None
            return False
        if holder != self.identity:
            spec.acquire_time = _now_micro()
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            log.info("taking over leadership from %s (lease expired)", holder)
        spec.holder_identity = self.identity
        spec.renew_time = _now_micro()
        spec.lease_duration_seconds = self.duration
        try:
            # replace carries the resourceVersion we read: two contenders cannot both win.
            self.coord.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            log.info("lease update lost a race (%s)", exc.reason)
            self._renewed_at = None
            return False
        if self._renewed_at is None:
            log.info("became leader as %s", self.identity)
        self._renewed_at = started
        return True

    def _create(self, started: float) -> bool:
        body = {
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                     "acquireTime": _now_micro(), "renewTime": _now_micro(), "leaseTransitions": 0},
        }
        try:
            self.coord.create_namespaced_lease(self.namespace, body)
        except ApiException as exc:
            log.info("lease creation lost a race (%s)", exc.reason)
            return False
        log.info("became leader as %s (new lease)", self.identity)
        self._renewed_at = started
        return True

    def release(self) -> None:
        """Give the lease up on a clean shutdown so a standby takes over at once."""
        if self._renewed_at is None:
            return
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity == self.identity:
                lease.spec.renew_time = datetime.fromtimestamp(0, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                self.coord.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException:
            pass
        self._renewed_at = None
