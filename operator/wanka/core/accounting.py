"""Pool accounting: what a snapshot of a pool's nodes says about its capacity and health."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wanka.core.lifecycle import WAITING
from wanka.core.snapshot import WHOLE, Node, Snapshot


@dataclass(frozen=True)
class ModelSummary:
    model: str
    total: int
    free: float


@dataclass(frozen=True)
class PoolSummary:
    """Counts that become GPUPool status; GPUs in GPU-equivalents (0.25 slice = 0.25)."""

    nodes_total: int = 0
    nodes_healthy: int = 0
    nodes_sick: int = 0
    nodes_recovering: int = 0
    nodes_quarantined: int = 0
    nodes_onboarding: int = 0
    gpus_total: int = 0
    gpus_allocatable: int = 0
    gpus_allocated: float = 0.0
    gpus_free: float = 0.0
    gpus_stranded: float = 0.0
    sick_devices: int = 0
    devices_idle: int = 0  # healthy, nothing on it
    devices_shared: int = 0  # healthy, partly allocated to shares
    devices_full: int = 0  # healthy, fully allocated (whole or shares adding up to 1)
    models: tuple[ModelSummary, ...] = field(default=())
    sick_nodes: tuple[str, ...] = field(default=())

    def gpu_parts(self) -> dict[str, float]:
        """`gpus_total` split into parts that add up to it: allocated, free (usable by a pending
        shape), stranded (free, but no pending shape fits it) and unavailable (neither allocated
        nor free: sick devices, cordoned or quarantined nodes)."""
        free = max(0.0, self.gpus_free - self.gpus_stranded)
        stranded = min(self.gpus_stranded, self.gpus_free)
        unavailable = max(0.0, self.gpus_total - self.gpus_allocated - self.gpus_free)
        return {"allocated": self.gpus_allocated, "free": round(free, 3), "stranded": stranded,
                "unavailable": round(unavailable, 3)}


def _gpu(milli: int) -> float:
    return round(milli / WHOLE, 3)


def node_allocated_milli(node: Node) -> int:
    return sum(d.used_milli for d in node.devices) + node.opaque_gpus * WHOLE


def summarize(snapshot: Snapshot, stranded_milli: int = 0) -> PoolSummary:
    """Summarise every node of `snapshot` (built for one pool).

    Allocated counts every bound pod on the pool's nodes, ours or not, on any node state, so
    the numbers add up against `kubectl describe node`. Allocatable and free count only
    devices that can take new work: healthy devices on schedulable nodes.
    """
    nodes = list(snapshot.nodes.values())
    health = {n.name: n.health for n in nodes}
    sick = tuple(sorted(n.name for n in nodes if n.health == "Sick" or
                        (n.health == "Healthy" and not n.schedulable)))
    total = sum(len(n.devices) for n in nodes)
    allocated = sum(node_allocated_milli(n) for n in nodes)
    usable = [n for n in nodes if n.schedulable]
    allocatable = sum(sum(1 for d in n.devices if d.healthy) for n in usable)
    free = sum(max(0, n.free_milli) for n in usable)
    by_model: dict[str, list[Node]] = {}
    for n in nodes:
        by_model.setdefault(n.model or "unknown", []).append(n)
    models = tuple(
        ModelSummary(
            model=m,
            total=sum(len(n.devices) for n in ns),
            free=_gpu(sum(max(0, n.free_milli) for n in ns if n.schedulable)),
        )
        for m, ns in sorted(by_model.items())
    )
    return PoolSummary(
        nodes_total=len(nodes),
        nodes_healthy=sum(1 for n in nodes if n.schedulable and n.health == "Healthy"),
        nodes_sick=len(sick),
        nodes_recovering=sum(1 for h in health.values() if h == "Recovering"),
        nodes_quarantined=sum(1 for h in health.values() if h == "Quarantined"),
        nodes_onboarding=sum(1 for h in health.values() if h == "Onboarding"),
        gpus_total=total,
        gpus_allocatable=allocatable,
        gpus_allocated=_gpu(allocated),
        gpus_free=_gpu(free),
        gpus_stranded=_gpu(stranded_milli),
        sick_devices=sum(1 for n in nodes for d in n.devices if not d.healthy),
        devices_idle=sum(1 for n in nodes for d in n.devices if d.healthy and d.idle)
        - sum(n.opaque_gpus for n in nodes),
        devices_shared=sum(1 for n in nodes for d in n.devices
                           if d.healthy and 0 < d.used_milli < WHOLE),
        devices_full=sum(1 for n in nodes for d in n.devices if d.healthy and d.used_milli >= WHOLE)
        + sum(n.opaque_gpus for n in nodes),
        models=models,
        sick_nodes=sick,
    )


WAITING_PHASES = (None, *WAITING)  # a job with no status yet waits too


def queue_depth(jobs: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """TrainingJobs waiting for a placement, by (queue, pool)."""
    depth: dict[tuple[str, str], int] = {}
    for job in jobs:
        spec = job.get("spec") or {}
        if (job.get("status") or {}).get("phase") not in WAITING_PHASES or not spec.get("queue"):
            continue
        key = (str(spec["queue"]), str(spec.get("pool") or ""))
        depth[key] = depth.get(key, 0) + 1
    return depth


def usage_by_owner(allocs: Iterable[tuple[str, int]]) -> dict[str, float]:
    """Sum (owner, milli) pairs into GPU-equivalents per owner."""
    out: dict[str, int] = {}
    for owner, milli in allocs:
        out[owner] = out.get(owner, 0) + milli
    return {k: _gpu(v) for k, v in out.items()}
