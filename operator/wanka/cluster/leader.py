"""Leader election on a coordination.k8s.io Lease: of several replicas only the holder acts.

Every replica keeps watching (warm caches, fast failover); only the leader runs the
reconcile loop, and every write it sends is fenced by `is_leader` (cluster/fence.py).

Time is only ever compared on this replica's own monotonic clock (client-go's rule): a
candidate counts a holder's lease as expired once the Lease record has not changed for a
lease duration since THIS replica last saw it change; the holder's `renewTime`, stamped by
another machine's clock, is written for people and never compared. The leader stops acting
when it has not renewed within its renew deadline, which is shorter than the lease
duration, so it has stepped down before any candidate can take over.
"""

from __future__ import annotations

import copy
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from wanka.metrics import LEADER_ELECTION_ERRORS

log = logging.getLogger(__name__)

Lease = dict[str, Any]


class LeaseConflict(Exception):
    """Someone else wrote the Lease since we read it (or created it first)."""


class LeaseStore(Protocol):
    """The three Lease calls election needs, on plain dicts in the API's JSON shape."""

    def get(self, namespace: str, name: str) -> Lease | None: ...

    def create(self, namespace: str, body: Lease) -> Lease: ...

    def replace(self, namespace: str, name: str, body: Lease) -> Lease: ...


class ApiLeaseStore:
    """LeaseStore over the API server; `replace` carries the read resourceVersion (409 on a race)."""

    def __init__(self, api: client.ApiClient, timeout: tuple[float, float] = (3.0, 5.0)) -> None:
        self.coord = client.CoordinationV1Api(api)
        self.timeout = timeout

    def get(self, namespace: str, name: str) -> Lease | None:
        try:
            raw = self.coord.read_namespaced_lease(name, namespace, _preload_content=False,
                                                   _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _decode(raw)

    def create(self, namespace: str, body: Lease) -> Lease:
        try:
            return _decode(self.coord.create_namespaced_lease(
                namespace, body, _preload_content=False, _request_timeout=self.timeout))
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflict(exc.reason) from exc
            raise

    def replace(self, namespace: str, name: str, body: Lease) -> Lease:
        try:
            return _decode(self.coord.replace_namespaced_lease(
                name, namespace, body, _preload_content=False, _request_timeout=self.timeout))
        except ApiException as exc:
            if exc.status in (404, 409):
                raise LeaseConflict(exc.reason) from exc
            raise


def _decode(raw: Any) -> Lease:
    try:
        data: Lease = json.loads(raw.data)
    finally:
        raw.release_conn()  # back to the pool for the next renewal
    return data


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class _Seen:
    """What identifies one version of the Lease record."""

    holder: str
    renew_time: str | None
    version: str | None

    @classmethod
    def of(cls, lease: Mapping[str, Any]) -> _Seen:
        spec = lease.get("spec") or {}
        return cls(str(spec.get("holderIdentity") or ""), spec.get("renewTime"),
                   (lease.get("metadata") or {}).get("resourceVersion"))


class LeaseElector:
    """`tick()` tries to acquire or renew and never raises; `is_leader` says whether to act now."""

    def __init__(
        self,
        store: LeaseStore,
        namespace: str,
        name: str = "wanka-operator",
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry period < renew deadline < lease duration")
        self.store = store
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self.wall = wall
        self.term = 0  # incremented each time this replica becomes leader
        self._seen: _Seen | None = None
        self._seen_at = 0.0
        self._renewed_at: float | None = None

    @property
    def is_leader(self) -> bool:
        # Renewed within the deadline, on our own clock: a candidate waits a whole lease
        # duration from when it saw our last renewal, so we stop first.
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.renew_deadline

    def tick(self) -> bool:
        """One attempt; any failure (a lost race, an API error, a refused connection) is
        logged and counted, and the next tick tries again."""
        was = self.is_leader
        try:
            self._attempt()
        except LeaseConflict as exc:
            log.info("lease %s/%s changed under us (%s)", self.namespace, self.name, exc)
        except Exception as exc:
            LEADER_ELECTION_ERRORS.inc()
            log.warning("leader election attempt failed: %s: %s", type(exc).__name__, exc)
        now = self.is_leader
        if was and not now:
            log.warning("stepping down: lease %s/%s not renewed within %.0fs (last seen held by %s)",
                        self.namespace, self.name, self.renew_deadline,
                        (self._seen.holder if self._seen else "") or "nobody")
        return now

    def _attempt(self) -> None:
        started = self.clock()
        lease = self.store.get(self.namespace, self.name)
        if lease is None:
            self._won(self.store.create(self.namespace, self._record(None)), started, "a new lease")
            return
        self._observe(lease)
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and self.clock() - self._seen_at < duration:
            self._renewed_at = None  # someone else holds a lease we saw change recently
            return
        why = ("the lease names us" if holder == self.identity else
               f"the lease of {holder} expired" if holder else "the lease had no holder")
        self._won(self.store.replace(self.namespace, self.name, self._record(lease)), started, why)

    def _observe(self, lease: Mapping[str, Any]) -> None:
        seen = _Seen.of(lease)
        if seen != self._seen:
            self._seen, self._seen_at = seen, self.clock()

    def _record(self, lease: Lease | None) -> Lease:
        now = _stamp(self.wall())
        body: Lease = copy.deepcopy(lease) if lease else {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace}}
        spec: dict[str, Any] = body.setdefault("spec", {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = (spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        spec["holderIdentity"] = self.identity
        spec["renewTime"] = now
        spec["leaseDurationSeconds"] = round(self.lease_duration)
        return body

    def _won(self, lease: Lease, started: float, why: str) -> None:
        if not self.is_leader:
            self.term += 1
            log.info("became leader as %s (%s)", self.identity, why)
        self._observe(lease)
        # The renewal counts from before the request left: the others saw it later.
        self._renewed_at = started

    def release(self) -> None:
        """Give the lease up on a clean shutdown so that a standby takes over at once."""
        self._renewed_at = None  # the fence shuts first
        if self.term == 0:
            return
        try:
            lease = self.store.get(self.namespace, self.name)
            spec = (lease or {}).get("spec") or {}
            if lease is not None and spec.get("holderIdentity") == self.identity:
                spec.pop("holderIdentity", None)  # no holder: anyone may take it without waiting
                spec["leaseDurationSeconds"] = 1
                spec["renewTime"] = _stamp(self.wall())
                self.store.replace(self.namespace, self.name, lease)
        except Exception as exc:
            log.info("could not release lease %s/%s: %s", self.namespace, self.name, exc)
