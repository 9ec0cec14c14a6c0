"""The operator's in-memory view of the cluster, fed by watch events, waking loops on change.

What the operator itself wrote is *assumed* (Kueue's AssumeWorkload): reads see the written
object until the watch shows a newer version of it, or until a bound passes and the
assumption is forgotten (the write may have been lost; the watch is the truth). Cached
objects are never mutated: an assumption is a new object beside the watched one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace or "", name)
ASSUME_SECONDS = 30.0
# Test failpoint: deliver every watch event this many seconds late (a lagging watch).
WATCH_LAG_ENV = "WANKA_FAILPOINT_WATCH_LAG_SECONDS"


# Never read by the operator, and the bulk of many objects: dropped before anything is cached.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def lean(body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` without what nothing here reads: managedFields (often half of an object) and
    kubectl's last-applied copy of the whole object. The body itself is left as it is."""
    meta = body.get("metadata")
    if not isinstance(meta, Mapping):
        return dict(body)
    notes = meta.get("annotations")
    if "managedFields" not in meta and not (isinstance(notes, Mapping) and LAST_APPLIED in notes):
        return dict(body)
    slim = {k: v for k, v in meta.items() if k != "managedFields"}
    if isinstance(notes, Mapping) and LAST_APPLIED in notes:
        slim["annotations"] = {k: v for k, v in notes.items() if k != LAST_APPLIED}
    return {**body, "metadata": slim}


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def version(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class _Assumed:
    body: dict[str, Any]
    upto: int  # forgotten once the watch shows this resourceVersion or a newer one
    until: float  # forgotten after this (monotonic) time in any case
    created: bool  # we created it: its absence from a LIST does not refute it


@dataclass
class Store:
    """Objects of one kind by (namespace, name). The watch streams (their own threads) and the
    reconcile loop (another thread) share it, so every access holds the lock. What goes in is
    leaned (`lean`) on the way: every entry point, watched, listed or assumed."""

    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    assumed: dict[Key, _Assumed] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    # Counts every change (watched or assumed): a loop that saw the same count saw the same store.
    changes: int = 0

    def upsert(self, body: Mapping[str, Any]) -> None:
        with self.lock:
            self.objects[key_of(body)] = lean(body)
            self.changes += 1

    def delete(self, body: Mapping[str, Any]) -> None:
        with self.lock:
            self.changes += 1
            key = key_of(body)
            self.objects.pop(key, None)
            self.assumed.pop(key, None)

    def _view(self, key: Key) -> dict[str, Any] | None:
        """The object as this operator should see it: watched, or assumed over it."""
        watched = self.objects.get(key)
        mine = self.assumed.get(key)
        if mine is None:
            return watched
        if (self.clock() > mine.until
                or (watched is None and not mine.created)  # it is gone (its DELETED came first)
                or (watched is not None and version(watched) >= mine.upto)):
            del self.assumed[key]  # the watch caught up (or the bound passed): it is the truth
            return watched
        return mine.body

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self._view((namespace, name))

    def values(self) -> list[dict[str, Any]]:
        with self.lock:
            if not self.assumed:
                return list(self.objects.values())
            out = []
            for key in self.objects.keys() | self.assumed.keys():
                body = self._view(key)
                if body is not None:
                    out.append(body)
            return out

    def assume(self, body: Mapping[str, Any], upto: int | None = None, seconds: float = ASSUME_SECONDS,
               created: bool = False) -> None:
        """Read `body` in place of the watched object until the watch shows version `upto`
        (default: `body`'s own version) or newer, or `seconds` pass. `created`: we created it."""
        with self.lock:
            self.changes += 1
            self.assumed[key_of(body)] = _Assumed(lean(body), version(body) if upto is None else upto,
                                                  self.clock() + seconds, created)

    def replace(self, bodies: list[dict[str, Any]]) -> None:
        """Take a full LIST, but keep any object a watch event brought in newer than it."""
        with self.lock:
            self.changes += 1
            fresh = {key_of(b): lean(b) for b in bodies}
            for key, current in self.objects.items():
                listed = fresh.get(key)
                if listed is not None and version(current) > version(listed):
                    fresh[key] = current
            self.objects = fresh
            for key in [k for k, a in self.assumed.items() if k not in fresh and not a.created]:
                del self.assumed[key]  # a change to an object the LIST says is gone

    def __len__(self) -> int:
        with self.lock:
            return len(self.objects)


KINDS = ("nodes", "pods", "gpupools", "trainingjobs", "tenantqueues", "trainingjobprogresses", "namespaces", "jobs")


class _Lag:
    """Delivers watch events `seconds` late, in order (a failpoint for tests)."""

    def __init__(self, seconds: float, deliver: Callable[[str, str | None, Mapping[str, Any]], None]) -> None:
        self.seconds = seconds
        self.deliver = deliver
        self.queue: list[tuple[float, int, str, str | None, Mapping[str, Any]]] = []
        self.counter = itertools.count()
        self.cond = threading.Condition()
        threading.Thread(target=self._run, name="watch-lag", daemon=True).start()

    def put(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        with self.cond:
            heapq.heappush(self.queue, (time.monotonic() + self.seconds, next(self.counter), kind,
                                        event_type, dict(body)))
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue or self.queue[0][0] > time.monotonic():
                    self.cond.wait(timeout=(self.queue[0][0] - time.monotonic()) if self.queue else None)
                _, _, kind, event_type, body = heapq.heappop(self.queue)
            self.deliver(kind, event_type, body)


class FleetCache:
    """Watched objects of every kind the operator reads, plus a wake-up signal per loop."""

    def __init__(self, lag_seconds: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stores: dict[str, Store] = {kind: Store(clock=clock) for kind in KINDS}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        if lag_seconds is None:
            lag_seconds = float(os.environ.get(WATCH_LAG_ENV) or 0)
        self._lag = _Lag(lag_seconds, self._observe) if lag_seconds > 0 else None
        if self._lag is not None:
            log.warning("failpoint: every watch event is delivered %.1fs late", lag_seconds)

    def store(self, kind: str) -> Store:
        return self.stores[kind]

    def changes(self, *kinds: str) -> tuple[int, ...]:
        """Change counts of these stores: equal counts, equal contents (assumptions included)."""
        return tuple(self.stores[k].changes for k in kinds)

    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Apply one watch event (ADDED, MODIFIED or DELETED; any other type counts as a change)."""
        if self._lag is not None:
            self._lag.put(kind, event_type, body)
        else:
            self._observe(kind, event_type, body)

    def _observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            self.stores[kind].delete(body)
        else:
            self.stores[kind].upsert(body)
        self.wake()

    def forget(self) -> None:
        """Drop every assumption (a new leadership term: another replica may have acted)."""
        for store in self.stores.values():
            with store.lock:
                store.assumed.clear()
                store.changes += 1

    def replace(self, kind: str, bodies: list[dict[str, Any]]) -> None:
        """Replace a whole store with a fresh LIST (start-up and periodic resync)."""
        self.stores[kind].replace(bodies)
        self.wake()

    def subscribe(self) -> asyncio.Event:
        """An event that is set whenever anything changes; the loop clears it before work.

        Call from the event loop that will wait on it."""
        event = asyncio.Event()
        event.set()
        self._waiters.append((asyncio.get_running_loop(), event))
        return event

    def wake(self) -> None:
        """Thread-safe: the watch streams call it from their own threads."""
        for loop, event in self._waiters:
            if loop.is_closed() or event.is_set():
                continue  # (set already: the loop has not taken the last wake-up yet)
            loop.call_soon_threadsafe(event.set)
