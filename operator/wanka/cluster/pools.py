"""Keeps every GPUPool's status true to the nodes it selects and the pods bound on them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from wanka.api.common import Condition, now_utc, set_condition
from wanka.api.gpupool import (
    DeviceCounts,
    GPUCounts,
    GPUPoolSpec,
    GPUPoolStatus,
    ModelCount,
    NodeCounts,
)
from wanka.api.trainingjob import TrainingJobSpec
from wanka.cluster.cache import FleetCache
from wanka.cluster.fence import NotLeader
from wanka.cluster.ledger import raw_ledger
from wanka.cluster.mig import read_geometry
from wanka.cluster.translate import Membership, PassMemo, build_pool_snapshot, pod_requests, pool_membership
from wanka.cluster.writer import Recorder
from wanka.core.accounting import PoolSummary, summarize
from wanka.core.fragmentation import Shape, snapshot_stranded
from wanka.core.health import PoolCondition
from wanka.core.snapshot import WHOLE, Allocation
from wanka.metrics import RECONCILE_ERRORS

RESYNC_SECONDS = 30.0
# How stale a pool's allocation counts may be while pods and jobs change (node and pool
# changes, which decide health and membership, are reported at once).
LOAD_REFRESH_SECONDS = 1.0

log = logging.getLogger(__name__)


class StatusPatcher(Protocol):
    def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool: ...


def parse_spec(pool: Mapping[str, Any]) -> GPUPoolSpec:
    return GPUPoolSpec.model_validate(pool.get("spec") or {})


def invalid_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"spec.{where}: {err['msg']}")
    return "; ".join(parts)


def job_shape(job: Mapping[str, Any], resource: str) -> Shape | None:
    """One replica's request shape, or None for an invalid spec or a MIG/CPU-only request."""
    try:
        tj = TrainingJobSpec.model_validate(job.get("spec") or {})
    except ValidationError:
        return None
    cpu = pod_requests({"spec": tj.template.wire()["spec"]}, resource)[0]
    res = tj.resources
    if res.gpu_fraction is not None:
        return Shape(cpu, res.gpu_milli, 1)
    if res.gpus:
        return Shape(cpu, WHOLE, res.gpus)
    return None


def pool_shapes(jobs: Iterable[Mapping[str, Any]], pool: str, spec: GPUPoolSpec,
                shape_of: Callable[[Mapping[str, Any]], Shape | None] | None = None) -> list[Shape]:
    """The request shapes of a pool's unfinished jobs: what its free capacity must serve.
    Free capacity none of them can use is stranded."""
    shape_of = shape_of or (lambda job: job_shape(job, spec.accelerator.resource_name))
    shapes = set()
    for job in jobs:
        phase = (job.get("status") or {}).get("phase")
        if (job.get("spec") or {}).get("pool") != pool or phase in ("Succeeded", "Failed", "Suspended"):
            continue
        shape = shape_of(job)
        if shape is not None:
            shapes.add(shape)
    return sorted(shapes, key=lambda s: (s.gpus, s.gpu_milli, s.cpu_milli))


def overlap_message(nodes: list[str], others: list[str], shown: int = 5) -> str:
    """Why some selected nodes are in no pool, naming the first few and the other pools."""
    if not nodes:
        return ""
    names = ", ".join(nodes[:shown]) + (f" and {len(nodes) - shown} more" if len(nodes) > shown else "")
    return (f"{len(nodes)} node(s) ({names}) are also selected by GPUPool {', '.join(others)}: "
            "a node belongs to at most one pool, so they are in none until the selectors stop overlapping")


def status_from_summary(
    summary: PoolSummary,
    previous: GPUPoolStatus | None,
    generation: int | None,
    conflicts: list[str],
    now: datetime,
    guard: PoolCondition | None = None,
    overlap: str = "",
) -> GPUPoolStatus:
    conditions: list[Condition] = list(previous.conditions) if previous else []
    if guard is not None:
        set_condition(conditions, guard.type, guard.status, guard.reason, guard.message,
                      generation, now)
    if overlap:
        set_condition(conditions, "Ready", "False", "OverlappingPools", overlap, generation, now)
    elif summary.nodes_total:
        set_condition(conditions, "Ready", "True", "NodesSelected",
                      f"{summary.nodes_total} nodes, {summary.gpus_total} GPUs", generation, now)
    else:
        set_condition(conditions, "Ready", "False", "NoNodesSelected",
                      "the nodeSelector matches no node", generation, now)
    if summary.nodes_sick or summary.sick_devices:
        names = ", ".join(summary.sick_nodes[:10]) + (" ..." if len(summary.sick_nodes) > 10 else "")
        msg = f"{summary.nodes_sick} sick nodes" + (f" ({names})" if names else "")
        msg += f", {summary.sick_devices} sick devices"
        set_condition(conditions, "Degraded", "True", "SickNodes", msg, generation, now)
    else:
        set_condition(conditions, "Degraded", "False", "AllHealthy", "no sick node or device",
                      generation, now)
    if conflicts:
        set_condition(conditions, "Overcommitted", "True", "DeviceConflict",
                      "; ".join(conflicts[:5]), generation, now)
    else:
        set_condition(conditions, "Overcommitted", "False", "NoConflict",
                      "no device is claimed twice", generation, now)
    return GPUPoolStatus(
        observed_generation=generation,
        nodes=NodeCounts(
            total=summary.nodes_total,
            healthy=summary.nodes_healthy,
            sick=summary.nodes_sick,
            recovering=summary.nodes_recovering,
            quarantined=summary.nodes_quarantined,
            onboarding=summary.nodes_onboarding,
        ),
        gpus=GPUCounts(
            total=summary.gpus_total,
            allocatable=summary.gpus_allocatable,
            allocated=summary.gpus_allocated,
            free=summary.gpus_free,
            stranded=summary.gpus_stranded,
        ),
        devices=DeviceCounts(idle=max(0, summary.devices_idle), shared=summary.devices_shared,
                             full=summary.devices_full, unhealthy=summary.sick_devices),
        models=[ModelCount(model=m.model, total=m.total, free=m.free) for m in summary.models],
        conditions=conditions,
    )


@dataclass
class PoolReconciler:
    """Recomputes every pool from the cache and writes only what changed."""

    cache: FleetCache
    writer: StatusPatcher
    events: Recorder
    clock: Callable[[], datetime] = now_utc
    on_summary: Callable[[str, PoolSummary], None] | None = None
    guard: Mapping[str, PoolCondition] = field(default_factory=dict)
    _last: dict[str, dict[str, Any]] = field(default_factory=dict)
    _invalid: dict[str, str] = field(default_factory=dict)
    # A job's spec only changes with its generation: validate it once, not every second.
    _shapes: dict[tuple[str, int, str], Shape | None] = field(default_factory=dict)
    # Each job's ledger entries, read again only when the job changes: uid -> (version, entries).
    _ledger: dict[str, tuple[str, list[Allocation]]] = field(default_factory=dict)
    # Per pool: the node and pod translations of its last snapshot (translate.PassMemo).
    _memos: dict[str, PassMemo] = field(default_factory=dict)
    _token: Any = None
    _counted_at: float = 0.0  # when the last status pass ran
    _resync_at: float = 0.0

    def reconcile_all(self) -> None:
        # Pool status is a function of nodes, pods, jobs, pools and the health guard: when none
        # of them changed, neither did it (a resync every RESYNC_SECONDS all the same).
        fleet = (self.cache.changes("nodes", "gpupools"), repr(sorted(self.guard.items())))
        token = (fleet, self.cache.changes("pods", "trainingjobs"))
        now = time.monotonic()
        if token == self._token and now < self._resync_at:
            return
        if self._token is not None and fleet == self._token[0] and now < self._counted_at + LOAD_REFRESH_SECONDS:
            # Only pods and jobs changed, and the status is younger than LOAD_REFRESH_SECONDS:
            # a burst of placements is counted once it settles (the fleet loop comes back every
            # second), not on every pass in the way of the next placement.
            return
        self._token, self._counted_at, self._resync_at = token, now, now + RESYNC_SECONDS
        nodes = self.cache.store("nodes").values()
        pods = self.cache.store("pods").values()
        ledger = self._ledger_by_pool()
        pools = self.cache.store("gpupools").values()
        specs = {}
        for pool in pools:
            try:
                specs[str(pool["metadata"]["name"])] = parse_spec(pool)
            except ValidationError:
                continue  # an invalid pool selects nothing; reconcile reports it
        membership = pool_membership(specs, nodes)
        for pool in pools:
            try:
                self.reconcile(pool, nodes, pods, ledger.get(pool.get("metadata", {}).get("name"), []),
                               membership)
            except NotLeader:
                raise  # not a broken pool: this replica must stop writing altogether
            except Exception as exc:  # one broken pool must not stop the others
                RECONCILE_ERRORS.labels("gpupool").inc()
                log.exception("reconciling pool %s failed", pool.get("metadata", {}).get("name"))
                try:
                    self.events.record({**pool, "apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool"}, "Warning",
                                       "ReconcileError", f"{type(exc).__name__}: {exc}"[:1024])
                except Exception:
                    log.debug("could not record the failure on the pool", exc_info=True)

    def reconcile(self, pool: Mapping[str, Any], nodes: list[dict[str, Any]], pods: list[dict[str, Any]],
                  ledger: Iterable[Allocation] = (), membership: Membership | None = None) -> None:
        """`membership`: every pool's nodes (see `pool_membership`); None: this pool alone."""
        meta = pool.get("metadata") or {}
        name = str(meta.get("name"))
        generation = meta.get("generation")
        now = self.clock()
        previous = self._previous_status(pool)
        try:
            spec = parse_spec(pool)
        except ValidationError as exc:
            message = invalid_message(exc)
            conditions = list(previous.conditions) if previous else []
            set_condition(conditions, "Ready", "False", "InvalidSpec", message, generation, now)
            status = GPUPoolStatus(observed_generation=generation, conditions=conditions)
            if self._invalid.get(name) != message:
                self.events.record(pool, "Warning", "InvalidSpec", message)
                self._invalid[name] = message
            self._write(pool, name, status)
            return
        self._invalid.pop(name, None)
        # Reserved but not yet bound counts as allocated: the job loop sees the same ledger.
        if membership is None:
            membership = pool_membership({name: spec}, nodes)
        view = build_pool_snapshot(spec, nodes, pods, ledger, membership.nodes_of(name),
                                   self._memos.setdefault(name, PassMemo()))
        overlap = overlap_message(*membership.overlaps(name))
        shapes = pool_shapes(self.cache.store("trainingjobs").values(), name, spec,
                             lambda job: self._shape(job, spec.accelerator.resource_name))
        stranded = snapshot_stranded(view.snapshot, shapes, spec.sharing.max_shares_per_device)
        summary = summarize(view.snapshot, stranded_milli=stranded if shapes else 0)
        if self.on_summary:
            self.on_summary(name, summary)
        status = status_from_summary(summary, previous, generation, view.conflicts, now,
                                     self.guard.get(name), overlap)
        status.devices.mig_partitioned = sum(
            sum(1 for g in read_geometry(n).values() if g)
            for n in nodes if n["metadata"]["name"] in view.snapshot.nodes)
        self._announce(pool, previous, status)
        self._write(pool, name, status)

    def _ledger_by_pool(self) -> dict[str, list[Allocation]]:
        """Every active job's reservations, by pool."""
        out: dict[str, list[Allocation]] = {}
        seen = set()
        for job in self.cache.store("trainingjobs").values():
            meta = job.get("metadata") or {}
            uid, version = str(meta.get("uid")), str(meta.get("resourceVersion"))
            seen.add(uid)
            cached = self._ledger.get(uid)
            if cached is None or cached[0] != version:
                cached = self._ledger[uid] = (version, raw_ledger(job))
            if cached[1]:
                out.setdefault(str((job.get("spec") or {}).get("pool")), []).extend(cached[1])
        if len(self._ledger) > 2 * len(seen) + 1000:  # forget deleted jobs now and then
            self._ledger = {k: v for k, v in self._ledger.items() if k in seen}
        return out

    def _shape(self, job: Mapping[str, Any], resource: str) -> Shape | None:
        meta = job.get("metadata") or {}
        key = (str(meta.get("uid")), int(meta.get("generation") or 0), resource)
        if key not in self._shapes:
            if len(self._shapes) > 100_000:
                self._shapes.clear()  # bound the memo; deleted jobs' entries go with it
            self._shapes[key] = job_shape(job, resource)
        return self._shapes[key]

    def _previous_status(self, pool: Mapping[str, Any]) -> GPUPoolStatus | None:
        raw = pool.get("status")
        if not raw:
            return None
        try:
            return GPUPoolStatus.model_validate(raw)
        except ValidationError:
            return None  # a status we cannot read is rewritten whole

    def _announce(self, pool: Mapping[str, Any], old: GPUPoolStatus | None, new: GPUPoolStatus) -> None:
        """Events for what a person would want in `kubectl describe gpupool`."""
        old_nodes = old.nodes if old else NodeCounts()
        ready = next((c for c in new.conditions if c.type == "Ready"), None)
        was = next((c for c in old.conditions if c.type == "Ready"), None) if old else None
        if (ready is not None and ready.reason == "OverlappingPools"
                and (was is None or (was.reason, was.message) != (ready.reason, ready.message))):
            self.events.record(pool, "Warning", "OverlappingPools", ready.message)
        if new.nodes.total != old_nodes.total:
            self.events.record(
                pool, "Normal", "NodesChanged",
                f"{new.nodes.total} nodes selected (was {old_nodes.total}), {new.gpus.total} GPUs",
            )
        if new.nodes.sick > old_nodes.sick:
            degraded = next((c for c in new.conditions if c.type == "Degraded"), None)
            self.events.record(pool, "Warning", "NodesSick",
                               degraded.message if degraded else f"{new.nodes.sick} sick nodes")
        elif new.nodes.sick < old_nodes.sick:
            self.events.record(pool, "Normal", "NodesRecovered",
                               f"{new.nodes.sick} sick nodes (was {old_nodes.sick})")

    def _write(self, pool: Mapping[str, Any], name: str, status: GPUPoolStatus) -> None:
        wire = status.wire()
        if (pool.get("status") or {}) == wire:
            return
        version = (pool.get("metadata") or {}).get("resourceVersion")
        # Already sent against this very version: wait for the watch to bring our write back
        # rather than patching the same thing again. Anyone else's write changes the version.
        if self._last.get(name) == {"version": version, "status": wire}:
            return
        if self.writer.patch_status("gpupools", "", name, wire):
            self._last[name] = {"version": version, "status": wire}
