"""The operator's in-memory view of the cluster, fed by watch events, waking loops on change."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (namespace or "", name)


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _version(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class Store:
    """Objects of one kind by (namespace, name). Watch handlers (kopf's executor threads) and
    the reconcile loop (another thread) share it, so every access holds the lock."""

    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def upsert(self, body: Mapping[str, Any]) -> None:
        with self.lock:
            self.objects[key_of(body)] = dict(body)

    def delete(self, body: Mapping[str, Any]) -> None:
        with self.lock:
            self.objects.pop(key_of(body), None)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self.objects.get((namespace, name))

    def values(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.objects.values())

    def replace(self, bodies: list[dict[str, Any]]) -> None:
        """Take a full LIST, but keep any object a watch event brought in newer than it."""
        with self.lock:
            fresh = {key_of(b): b for b in bodies}
            for key, current in self.objects.items():
                listed = fresh.get(key)
                if listed is not None and _version(current) > _version(listed):
                    fresh[key] = current
            self.objects = fresh

    def __len__(self) -> int:
        with self.lock:
            return len(self.objects)


KINDS = ("nodes", "pods", "gpupools", "trainingjobs", "tenantqueues", "configmaps", "namespaces")


class FleetCache:
    """Watched objects of every kind the operator reads, plus a wake-up signal per loop."""

    def __init__(self) -> None:
        self.stores: dict[str, Store] = {kind: Store() for kind in KINDS}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def store(self, kind: str) -> Store:
        return self.stores[kind]

    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Apply one watch event (kopf passes type None for the initial listing)."""
        if event_type == "DELETED":
            self.stores[kind].delete(body)
        else:
            self.stores[kind].upsert(body)
        self.wake()

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
        """Thread-safe: watch handlers run in kopf's executor threads."""
        for loop, event in self._waiters:
            if loop.is_closed():
                continue
            loop.call_soon_threadsafe(event.set)
