"""The operator's in-memory view of the cluster, fed by watch events, waking loops on change."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (namespace or "", name)


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


@dataclass
class Store:
    """Objects of one kind by (namespace, name); keeps the newest resourceVersion seen."""

    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)

    def upsert(self, body: Mapping[str, Any]) -> None:
        self.objects[key_of(body)] = dict(body)

    def delete(self, body: Mapping[str, Any]) -> None:
        self.objects.pop(key_of(body), None)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((namespace, name))

    def values(self) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def __len__(self) -> int:
        return len(self.objects)


KINDS = ("nodes", "pods", "gpupools", "trainingjobs", "tenantqueues", "configmaps")


class FleetCache:
    """Watched objects of every kind the operator reads, plus a wake-up signal per loop."""

    def __init__(self) -> None:
        self.stores: dict[str, Store] = {kind: Store() for kind in KINDS}
        self._waiters: list[asyncio.Event] = []

    def store(self, kind: str) -> Store:
        return self.stores[kind]

    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Apply one watch event (kopf passes type None for the initial listing)."""
        if event_type == "DELETED":
            self.stores[kind].delete(body)
        else:
            self.stores[kind].upsert(body)
        self.wake()

    def subscribe(self) -> asyncio.Event:
        """An event that is set whenever anything changes; the loop clears it before work."""
        event = asyncio.Event()
        event.set()
        self._waiters.append(event)
        return event

    def wake(self) -> None:
        for event in self._waiters:
            event.set()
