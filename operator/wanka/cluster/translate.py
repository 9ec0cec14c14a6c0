"""Translates watched Kubernetes objects (plain dicts) into the core's fleet snapshot."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from kubernetes.utils import parse_quantity

from wanka.api.gpupool import GPUPoolSpec
from wanka.cluster import mig
from wanka.core.constraints import Taint
from wanka.core.health import HealthRecord
from wanka.core.snapshot import WHOLE, Allocation, Device, DeviceShare, HealthState, Node, OverAllocation, Snapshot
from wanka.units import MAX_DEVICES_PER_NODE

T = TypeVar("T")

log = logging.getLogger(__name__)

# Labels and annotations Wanka reads and writes.
GPU_MODEL_LABEL = "wanka.io/gpu-model"
JOB_LABEL = "wanka.io/job"
REPLICA_LABEL = "wanka.io/replica"
DEVICES_ANNOTATION = "wanka.io/devices"  # "0,1,2,3" whole devices, or "3:250" a share of one
GPU_MEMORY_ANNOTATION = "wanka.io/gpu-memory-mib"
GPU_HEALTH_ANNOTATION = "wanka.io/gpu-health"  # written by the agent: {"3": {"healthy": false}}
HEALTH_ANNOTATION = "wanka.io/health"  # the operator's health record: {"state": "Sick", ...}
UNHEALTHY_TAINT = "wanka.io/unhealthy"
ONBOARDING_TAINT = "wanka.io/onboarding"  # NoSchedule while the node's burn-in runs
# Pods other controllers create and Wanka binds (see cluster/consumers.py).
SCHEDULER_NAME = "wanka"
POD_GROUP_LABEL = "wanka.io/pod-group"
BATCH_JOB_LABEL = "batch.kubernetes.io/job-name"
# The reservation of a pod Wanka binds but did not create: written before the binding, so a
# pod reserved but not yet bound holds its devices in every snapshot (the ledger of plain pods).
NODE_ANNOTATION = "wanka.io/node"
SLOT_ANNOTATION = "wanka.io/slot"  # a batch Job's pod: which of the Job's placements it takes
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# Node status is written by kubelets and device plugins, not by us: a node claiming more
# devices than any server holds is counted as this many, never allocated one object each.


def ts(value: Any) -> float | None:
    """Seconds since the epoch of an API timestamp ("2026-01-02T03:04:05Z") or a datetime."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def quantity(value: Any, default: str = "0") -> Decimal:
    try:
        return Decimal(parse_quantity(value if value is not None else default))
    except (ValueError, TypeError, ArithmeticError):
        return Decimal(0)


def device_count(node: Mapping[str, Any], resource: str) -> int:
    """The node's devices of `resource` by its status.allocatable (what the kubelet offers;
    capacity only when allocatable does not name it), bounded by MAX_DEVICES_PER_NODE."""
    status = _mapping(node.get("status"))
    allocatable = _mapping(status.get("allocatable"))
    source = allocatable if resource in allocatable else _mapping(status.get("capacity"))
    return max(0, min(MAX_DEVICES_PER_NODE, int(quantity(source.get(resource)))))


def pod_requests(pod: Mapping[str, Any], resource: str) -> tuple[int, int, int]:
    """(CPU millicores, memory MiB, extended-resource count) the pod holds on its node.

    Follows the scheduler's rule: the larger of the sum over containers and the largest init
    container; an extended resource's request defaults to its limit.
    """
    spec = _mapping(pod.get("spec"))

    def one(c: Any) -> tuple[Decimal, Decimal, Decimal]:
        # A tenant's template may hold anything here: what is not a mapping asks for nothing.
        res = _mapping(_mapping(c).get("resources"))
        req = _mapping(res.get("requests"))
        lim = _mapping(res.get("limits"))
        return (
            quantity(req.get("cpu")),
            quantity(req.get("memory")),
            quantity(req.get(resource, lim.get(resource))),
        )

    main = [one(c) for c in _items(spec.get("containers"))]
    init = [one(c) for c in _items(spec.get("initContainers"))]
    sums = [sum((m[i] for m in main), Decimal(0)) for i in range(3)]
    peaks = [max((m[i] for m in init), default=Decimal(0)) for i in range(3)]
    cpu, mem, gpu = (max(s, p) for s, p in zip(sums, peaks, strict=True))
    return int(cpu * 1000), int(mem / (1 << 20)), int(gpu)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def node_ready(node: Mapping[str, Any]) -> bool:
    cond = condition(node, "Ready")
    return bool(cond and cond.get("status") == "True")


def has_taint(node: Mapping[str, Any], key: str) -> bool:
    return any(_mapping(t).get("key") == key for t in _items(_mapping(node.get("spec")).get("taints")))


def node_taints(node: Mapping[str, Any]) -> tuple[Taint, ...]:
    """The node's taints a request may tolerate: all but Wanka's own `wanka.io/unhealthy` and
    `wanka.io/onboarding`, which make the node unschedulable for everyone. Malformed entries
    are left out."""
    out = []
    for taint in map(_mapping, _items(_mapping(node.get("spec")).get("taints"))):
        key, value, effect = taint.get("key"), taint.get("value") or "", taint.get("effect")
        if key in (UNHEALTHY_TAINT, ONBOARDING_TAINT) or not isinstance(key, str) or not isinstance(value, str):
            continue
        if effect in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            out.append(Taint(key, value, effect))
    return tuple(out)


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _json_annotation(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    raw = annotations_of(obj).get(key)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        log.warning("ignoring malformed %s annotation on %s", key, obj.get("metadata", {}).get("name"))
        return {}
    return data if isinstance(data, dict) else {}


def sick_conditions(node: Mapping[str, Any], spec: GPUPoolSpec) -> list[str]:
    """Reasons the node's own conditions call it sick: Ready not True, or a policy match."""
    reasons = []
    ready = condition(node, "Ready")
    if not ready or ready.get("status") != "True":
        reasons.append(f"Ready={ready.get('status') if ready else 'Unknown'}")
    for match in spec.health.unhealthy_conditions:
        cond = condition(node, match.type)
        if cond and cond.get("status") == match.status:
            reasons.append(f"{match.type}={match.status}:{cond.get('reason') or ''}".rstrip(":"))
    return reasons


def build_node(node: Mapping[str, Any], spec: GPUPoolSpec, levels: tuple[str, ...]) -> Node:
    meta = node.get("metadata") or {}
    status = node.get("status") or {}
    lab = labels(node)
    resource = spec.accelerator.resource_name
    count = device_count(node, resource)
    layout = mig.layout(node, count) if spec.sharing.mode == "MIG" else None
    count = layout.devices if layout is not None else count
    alloc = status.get("allocatable") or {}
    model = spec.accelerator.model or lab.get(GPU_MODEL_LABEL, "")
    memory_mib = (spec.accelerator.memory_gi_b or 0) * 1024
    device_health = _json_annotation(node, GPU_HEALTH_ANNOTATION)
    raw_record = annotations_of(node).get(HEALTH_ANNOTATION)
    record = HealthRecord.from_json(raw_record)
    # A device is out while the agent calls it sick or the operator's record has not yet
    # seen it stable (Recovering) or a person has not cleared it (Quarantined).
    out = {i for i, d in record.devices.items() if d.state != "Healthy"}
    devices = [
        Device(
            index=i,
            model=model,
            memory_mib=memory_mib,
            healthy=bool(_mapping(device_health.get(str(i))).get("healthy", True)) and i not in out,
        )
        for i in range(count)
    ]
    if layout is not None:
        layout.carve(devices)
    state: HealthState = record.state
    if not raw_record:
        # The operator has not judged this node yet: its own conditions decide.
        state = "Sick" if sick_conditions(node, spec) else "Healthy"
    schedulable = (
        node_ready(node)
        and not (node.get("spec") or {}).get("unschedulable")
        and not has_taint(node, UNHEALTHY_TAINT)
        and not has_taint(node, ONBOARDING_TAINT)
        and state == "Healthy"
    )
    return Node(
        name=str(meta.get("name")),
        cpu_milli=int(quantity(alloc.get("cpu")) * 1000),
        memory_mib=int(quantity(alloc.get("memory")) / (1 << 20)),
        devices=devices,
        labels=dict(lab),
        topology=tuple(lab.get(level, "") for level in levels),
        schedulable=schedulable,
        taints=node_taints(node),
        health=state,
    )


def pod_owner(pod: Mapping[str, Any]) -> tuple[str, str]:
    """(owner, member): the key under which a pod's allocation sits in the snapshot, the same
    as its reservation's. TrainingJob members by job and replica; Wanka-scheduled pod groups
    by group and pod; a batch Job's pods by Job and slot; any other pod by itself."""
    meta = pod.get("metadata") or {}
    lab = labels(pod)
    ns = meta.get("namespace", "")
    if JOB_LABEL in lab:
        return f"{ns}/{lab[JOB_LABEL]}", lab.get(REPLICA_LABEL, meta.get("name", ""))
    if (pod.get("spec") or {}).get("schedulerName") == SCHEDULER_NAME:
        slot = annotations_of(pod).get(SLOT_ANNOTATION)
        if slot is not None and BATCH_JOB_LABEL in lab:
            return f"batch:{ns}/{lab[BATCH_JOB_LABEL]}", str(slot)
        if lab.get(POD_GROUP_LABEL):
            return f"group:{ns}/{lab[POD_GROUP_LABEL]}", str(meta.get("name"))
    return f"pod:{ns}/{meta.get('name')}", "0"


def pod_node(pod: Mapping[str, Any]) -> str | None:
    """The node a pod is bound to, or reserved on by Wanka (a pod it binds but did not create)."""
    spec = pod.get("spec") or {}
    node = spec.get("nodeName")
    if not node and spec.get("schedulerName") == SCHEDULER_NAME:
        node = annotations_of(pod).get(NODE_ANNOTATION)
    return str(node) if node else None


def parse_devices(raw: str) -> tuple[DeviceShare, ...]:
    """'0,1,2' -> whole devices; '3:250' -> 250 milli of device 3. Raises ValueError."""
    shares = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        index, _, milli = part.partition(":")
        shares.append(DeviceShare(index=int(index), milli=int(milli) if milli else WHOLE))
    return tuple(shares)


def pod_allocation(pod: Mapping[str, Any], resource: str) -> Allocation | None:
    """What a bound (or reserved), non-terminal pod holds, or None for pods that hold nothing."""
    node = pod_node(pod)
    if not node or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return None
    cpu, mem, gpus = pod_requests(pod, resource)
    owner, member = pod_owner(pod)
    instance = mig.pod_instance(pod)
    if instance is not None:
        return Allocation(owner, member, node, cpu, mem, (instance,))
    raw = annotations_of(pod).get(DEVICES_ANNOTATION)
    shares: tuple[DeviceShare, ...] = ()
    if raw:
        try:
            shares = parse_devices(raw)
        except ValueError:
            log.warning("pod %s has a malformed %s annotation %r", owner, DEVICES_ANNOTATION, raw)
    if shares:
        mem_mib = int(annotations_of(pod).get(GPU_MEMORY_ANNOTATION, "0") or 0)
        if len(shares) == 1 and mem_mib:
            shares = (DeviceShare(shares[0].index, shares[0].milli, mem_mib),)
        return Allocation(owner, member, node, cpu, mem, shares)
    return Allocation(owner, member, node, cpu, mem, (), opaque_gpus=gpus)


@dataclass(frozen=True)
class Membership:
    """Which pool each node belongs to. A node selected by two or more pools belongs to none
    of them, so no device is ever counted in two pools' snapshots."""

    owner: Mapping[str, str]  # node -> the one pool selecting it
    claims: Mapping[str, tuple[str, ...]]  # node selected by several pools -> those pools

    def nodes_of(self, pool: str) -> frozenset[str]:
        return frozenset(node for node, owner in self.owner.items() if owner == pool)

    def overlaps(self, pool: str) -> tuple[list[str], list[str]]:
        """(the nodes `pool` shares with other pools, those other pools), both sorted."""
        nodes = sorted(n for n, pools in self.claims.items() if pool in pools)
        others = sorted({p for n in nodes for p in self.claims[n]} - {pool})
        return nodes, others


def pool_membership(pools: Mapping[str, GPUPoolSpec], nodes: Iterable[Mapping[str, Any]]) -> Membership:
    """The one rule deciding pool membership, shared by pool status and admission."""
    owner: dict[str, str] = {}
    claims: dict[str, tuple[str, ...]] = {}
    for node in nodes:
        lab = dict(labels(node))
        name = str((node.get("metadata") or {}).get("name"))
        selecting = tuple(sorted(p for p, spec in pools.items() if spec.node_selector.matches(lab)))
        if len(selecting) == 1:
            owner[name] = selecting[0]
        elif selecting:
            claims[name] = selecting
    return Membership(owner, claims)


@dataclass
class PoolView:
    """One pool's snapshot plus what did not fit into it."""

    snapshot: Snapshot
    conflicts: list[str] = field(default_factory=list)


_MISS = object()


class PassMemo:
    """Values by key, kept while the last pass (or build) or this one asked for them: what did
    not change is not computed again on every pass, and what nobody asks for any more is
    dropped at the next `turn`, so the memo never outgrows what a pass reads. A None key is
    never kept; an exception is never kept either (the next call raises it again). Not
    thread-safe: one per loop (and pool)."""

    def __init__(self) -> None:
        self._last: dict[Any, Any] = {}
        self._now: dict[Any, Any] = {}

    def get(self, key: Any, make: Callable[[], T]) -> T:
        if key is None:
            return make()
        hit = self._now.get(key, _MISS)
        if hit is _MISS:
            hit = self._last.get(key, _MISS)
        if hit is _MISS:
            hit = make()
        self._now[key] = hit
        return hit  # type: ignore[no-any-return]

    def of(self, obj: Mapping[str, Any], extra: Any, make: Callable[[], T]) -> T:
        """`make()` for the very object `obj` (the cache never edits an object: a change is a
        new object). The entry holds `obj`, so its id is never reused while the entry lives."""
        key = (id(obj), extra)  # (get's path, inlined: this runs for every node and pod of a pass)
        hit = self._now.get(key) or self._last.get(key)
        if hit is None:
            hit = (obj, make())
        self._now[key] = hit
        return hit[1]

    def turn(self) -> None:
        """A pass ended: what it did not ask for is dropped."""
        self._last, self._now = self._now, {}


def _fresh(proto: Node) -> Node:
    """A new, unallocated Node equal to `proto` (a memo's copy is never handed out itself:
    a snapshot's nodes and devices are mutated by allocations)."""
    return Node(
        name=proto.name, cpu_milli=proto.cpu_milli, memory_mib=proto.memory_mib,
        devices=[Device(index=d.index, model=d.model, memory_mib=d.memory_mib, healthy=d.healthy,
                        mig=dict(d.mig), mig_held=set(d.mig_held), mig_settling=d.mig_settling)
                 for d in proto.devices],
        labels=proto.labels, topology=proto.topology, schedulable=proto.schedulable, taints=proto.taints,
        health=proto.health,
    )


def build_pool_snapshot(
    spec: GPUPoolSpec,
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    reservations: Iterable[Allocation] = (),
    members: Collection[str] | None = None,
    memo: PassMemo | None = None,
) -> PoolView:
    """The snapshot of the pool's nodes, with the ledger's reservations and every bound pod
    on them applied. `members`: the nodes the pool owns (see `pool_membership`); None for a
    pool on its own, whose nodes are all those its selector matches. `memo`: this pool's
    translations from the last build, to reuse for the objects that did not change.

    A reservation and the pod that carries it out share one (owner, member) key: the pod is
    the same allocation, not a second one. (A gang is placed again only once every pod of
    its previous attempt is gone, so an old pod never hides behind a new reservation.)
    """
    levels = tuple(spec.topology.levels)
    if members is None:
        chosen = [n for n in nodes if spec.node_selector.matches(dict(labels(n)))]
    else:
        chosen = [n for n in nodes if (n.get("metadata") or {}).get("name") in members]
    resource = spec.accelerator.resource_name
    if memo is None:
        selected = [build_node(n, spec, levels) for n in chosen]
    else:
        # Everything of the spec that build_node reads, so a changed pool never reuses a node.
        node_key = (spec.accelerator.model_dump_json(), spec.sharing.mode,
                    spec.health.model_dump_json(include={"unhealthy_conditions"}), levels)
        selected = [_fresh(memo.of(n, node_key, lambda n=n: build_node(n, spec, levels)))  # type: ignore[misc]
                    for n in chosen]
    snap = Snapshot(selected, levels=levels)
    view = PoolView(snap)
    pinned: list[Allocation] = []
    opaque: list[Allocation] = []
    for pod in pods:
        if memo is None:
            node = pod_node(pod)
            alloc = pod_allocation(pod, resource) if node in snap.nodes else None
        else:
            node, alloc = memo.of(pod, resource, lambda pod=pod: (  # type: ignore[misc]
                pod_node(pod), pod_allocation(pod, resource)))
        if node not in snap.nodes:
            continue
        if alloc is not None:
            (pinned if alloc.devices else opaque).append(alloc)
    reserved = [r for r in reservations if r.node in snap.nodes]
    keys = {r.key for r in reserved}
    # Ledger first, then pinned pods, then opaque pods on whatever idle devices remain.
    pod_allocs = [a for a in (*pinned, *opaque) if a.key not in keys]
    for alloc in [*reserved, *pod_allocs]:
        try:
            snap.apply(alloc)
        except OverAllocation as exc:
            view.conflicts.append(f"{alloc.owner}/{alloc.member}: {exc}")
    if memo is not None:
        memo.turn()
    return view
